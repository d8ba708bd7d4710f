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
        }),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        loss_probe_port: Some(4002),
        speculation: None,
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
