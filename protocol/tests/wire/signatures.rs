//! Signed envelopes: tampered, forged, wrong-domain and wrong-author messages are refused.

use shoal_keys::{Domain, Signature};
use shoal_protocol::*;

use crate::strategies::{identity, node};

fn activation() -> Activation {
    Activation {
        epoch: 4,
        session: 77,
        step: 1,
        stage: 1,
        position: 5,
        tensor: Tensor {
            dtype: DType::F32,
            shape: vec![1, 1, 4],
            data: (0..16).collect(),
        },
        sample: None,
        reply_to: None,
        draft: Vec::new(),
    }
}

fn capability(of: u8) -> Capability {
    Capability {
        node: node(of),
        seq: 1,
        timestamp_ms: 1_700_000_000_000,
        model: None,
        flops: 2e10,
        mem_bw: Some(8e9),
        mem_bytes: 3_000_000_000,
        overhead_s: 0.0005,
        battery: Some(Battery {
            on_battery: true,
            level: Some(0.5),
            watts: Some(4.0),
        }),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        loss_probe_port: Some(4002),
        speculation: None,
        held: None,
        temp_c: Some(41.5),
        throttle: None,
    }
}

#[test]
fn tampered_tensor_fails_verification() {
    let signed = Signed::sign(&identity(0), activation()).unwrap();
    // Logs show the tensor's size, never its bytes.
    assert!(format!("{signed:?}").contains("bytes: 16"), "{signed:?}");
    let mut bytes = encode(&signed).unwrap();
    // The tensor data is the last field of the body, which is the last field of the frame.
    *bytes.last_mut().unwrap() ^= 0x01;
    let decoded: Signed<Activation> = decode(&bytes).unwrap();
    assert_ne!(decoded.unverified(), signed.unverified());
    assert_eq!(
        decoded.verify(),
        Err(ProtocolError::BadSignature {
            kind: Kind::Activation,
            signer: node(0)
        })
    );
    assert_eq!(
        PipelineMessage::decode(&bytes).unwrap_err().reason(),
        "bad_signature"
    );
}

#[test]
fn forged_signer_fails_verification() {
    let real = Signed::sign(&identity(0), activation()).unwrap();
    // Node 1 claims a body that node 0 signed.
    let forged =
        Signed::<Activation>::from_parts(node(1), *real.signature(), real.body_bytes().to_vec())
            .unwrap();
    assert_eq!(forged.verify().unwrap_err().reason(), "bad_signature");
    let bytes = encode(&forged).unwrap();
    assert_eq!(
        PipelineMessage::decode(&bytes).unwrap_err().reason(),
        "bad_signature"
    );
    // A random signature fails too.
    let junk = Signed::<Activation>::from_parts(
        node(0),
        Signature::from_bytes(&[0x5a; 64]).unwrap(),
        real.body_bytes().to_vec(),
    )
    .unwrap();
    assert!(junk.verify().is_err());
}

#[test]
fn signature_of_another_domain_fails() {
    let body = Signed::sign(&identity(0), activation())
        .unwrap()
        .body_bytes()
        .to_vec();
    for domain in [
        Domain::PLAN,
        Domain::CAPABILITY,
        Domain::LINKS,
        Domain::PROBE,
    ] {
        let sig = identity(0).sign(domain, &body);
        let s = Signed::<Activation>::from_parts(node(0), sig, body.clone()).unwrap();
        assert_eq!(
            s.verify().unwrap_err().reason(),
            "bad_signature",
            "{domain:?}"
        );
    }
    let sig = identity(0).sign(Domain::ACTIVATION, &body);
    let s = Signed::<Activation>::from_parts(node(0), sig, body).unwrap();
    assert_eq!(s.verify().unwrap(), &activation());
}

#[test]
fn author_must_be_signer() {
    // Node 0 cannot sign an announcement that claims to be node 1's.
    assert_eq!(
        Signed::sign(&identity(0), capability(1)).unwrap_err(),
        ProtocolError::SignerMismatch {
            kind: Kind::Capability,
            signer: Box::new(node(0)),
            claimed: Box::new(node(1)),
        }
    );
    // Nor can it get one past the decoder with a valid signature of its own.
    let mut body = Vec::new();
    ciborium::ser::into_writer(&capability(1), &mut body).unwrap();
    let sig = identity(0).sign(Domain::CAPABILITY, &body);
    let s = Signed::<Capability>::from_parts(node(0), sig, body).unwrap();
    assert_eq!(s.verify().unwrap_err().reason(), "signer_mismatch");
    let bytes = encode(&s).unwrap();
    assert_eq!(
        Topic::Capability.decode(&bytes).unwrap_err().reason(),
        "signer_mismatch"
    );
    // The honest announcement passes.
    let ok = Signed::sign(&identity(1), capability(1)).unwrap();
    let (signer, cap) = ok.into_verified().unwrap();
    assert_eq!((signer, cap), (node(1), capability(1)));
}

#[test]
fn frames_on_the_wrong_topic_or_protocol_are_refused() {
    let cap = encode(&Signed::sign(&identity(2), capability(2)).unwrap()).unwrap();
    assert_eq!(Topic::Plan.decode(&cap).unwrap_err().reason(), "wrong_kind");
    assert_eq!(
        PipelineMessage::decode(&cap).unwrap_err().reason(),
        "wrong_kind"
    );
    assert_eq!(
        GenerateResponse::decode(&cap).unwrap_err().reason(),
        "wrong_kind"
    );
    // An unsigned activation is not accepted where signed ones are required.
    let unsigned = encode(&activation()).unwrap();
    assert_eq!(
        PipelineMessage::decode(&unsigned).unwrap_err().reason(),
        "wrong_kind"
    );
    assert_eq!(
        GossipMessage::decode("shoal/1/nope", &cap)
            .unwrap_err()
            .reason(),
        "unknown_topic"
    );
}

fn invite(by: u8) -> Invite {
    Invite {
        inviter: node(by),
        swarm_key: Some([7; 32]),
        bootstrap: vec![format!("/ip4/192.168.1.20/tcp/4001/p2p/{}", node(by))],
        relays: Vec::new(),
        model: Some(ModelRef {
            name: "gemma-3-270m-q4".into(),
            manifest_sha256: [9; 32],
        }),
        issued_unix_s: 1_800_000_000,
        expires_unix_s: 1_800_086_400,
    }
}

#[test]
fn invites_verify_only_untampered_and_from_their_inviter() {
    let signed = Signed::sign(&identity(0), invite(0)).unwrap();
    let bytes = encode(&signed).unwrap();
    let decoded: Signed<Invite> = decode(&bytes).unwrap();
    assert_eq!(decoded.verify().unwrap(), &invite(0));
    // Every single-bit change is refused, by the decoder or by the signature, or is one the
    // encoding does not see (a map key written as a byte string instead of text): what
    // verifies is always the very invite that was signed.
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            if let Ok(d) = decode::<Signed<Invite>>(&b)
                && let Ok(body) = d.verify()
            {
                assert_eq!(body, &invite(0), "byte {i} bit {bit}");
                assert_eq!(d.signer(), signed.signer(), "byte {i} bit {bit}");
            }
        }
    }
    // Node 1 cannot issue an invite in node 0's name.
    assert!(Signed::sign(&identity(1), invite(0)).is_err());
    // Nor pass node 0's signature off as its own.
    let forged =
        Signed::<Invite>::from_parts(node(1), *signed.signature(), signed.body_bytes().to_vec())
            .unwrap();
    assert!(forged.verify().is_err());
    // An activation's signature is not an invite's.
    let other = Signed::sign(&identity(0), activation()).unwrap();
    let wrong =
        Signed::<Invite>::from_parts(node(0), *other.signature(), signed.body_bytes().to_vec())
            .unwrap();
    assert!(wrong.verify().is_err());
}

#[test]
fn invites_are_validated() {
    let id = identity(0);
    let mut no_addr = invite(0);
    no_addr.bootstrap.clear();
    assert!(Signed::sign(&id, no_addr).is_err());
    let mut bare = invite(0);
    bare.bootstrap = vec!["/ip4/10.0.0.1/tcp/4001".into()];
    assert!(Signed::sign(&id, bare).is_err());
    let mut backwards = invite(0);
    backwards.expires_unix_s = backwards.issued_unix_s;
    assert!(Signed::sign(&id, backwards).is_err());
    let mut many = invite(0);
    many.relays = vec![many.bootstrap[0].clone(); MAX_INVITE_ADDRS + 1];
    assert!(Signed::sign(&id, many).is_err());
    let mut public = invite(0);
    public.swarm_key = None;
    let bytes = encode(&Signed::sign(&id, public.clone()).unwrap()).unwrap();
    assert_eq!(
        decode::<Signed<Invite>>(&bytes).unwrap().verify().unwrap(),
        &public
    );
}
