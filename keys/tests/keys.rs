//! Tests of identities, key files and domain-separated signatures.

use std::os::unix::fs::PermissionsExt;

use shoal_keys::{Domain, Identity, KeyError, NodeId, Signature};

fn id(seed: u8) -> Identity {
    Identity::from_secret_bytes([seed; 32])
}

#[test]
fn sign_verify_round_trip() {
    let a = id(1);
    let sig = a.sign(Domain::PLAN, b"plan bytes");
    a.public_key()
        .verify(Domain::PLAN, b"plan bytes", &sig)
        .unwrap();
}

#[test]
fn wrong_key_fails() {
    let sig = id(1).sign(Domain::PLAN, b"m");
    let err = id(2).public_key().verify(Domain::PLAN, b"m", &sig);
    assert!(matches!(err, Err(KeyError::BadSignature)));
}

#[test]
fn every_flipped_bit_fails() {
    let a = id(3);
    let msg = b"activation payload".to_vec();
    let sig = a.sign(Domain::ACTIVATION, &msg);
    for i in 0..msg.len() * 8 {
        let mut m = msg.clone();
        m[i / 8] ^= 1 << (i % 8);
        assert!(a.public_key().verify(Domain::ACTIVATION, &m, &sig).is_err());
    }
    for i in 0..512 {
        let mut s = sig.to_bytes();
        s[i / 8] ^= 1 << (i % 8);
        let s = Signature::from_bytes(&s).unwrap();
        assert!(a.public_key().verify(Domain::ACTIVATION, &msg, &s).is_err());
    }
}

#[test]
fn other_domain_fails() {
    let a = id(4);
    let sig = a.sign(Domain::ACTIVATION, b"m");
    for d in [
        Domain::PLAN,
        Domain::CAPABILITY,
        Domain::LINKS,
        Domain::GENERATE,
    ] {
        assert!(a.public_key().verify(d, b"m", &sig).is_err(), "{d:?}");
    }
    // The length prefix keeps a domain plus message from colliding with a longer domain.
    let sig = a.sign(Domain::new("ab"), b"cm");
    assert!(
        a.public_key()
            .verify(Domain::new("abc"), b"m", &sig)
            .is_err()
    );
}

#[test]
fn node_id_is_the_libp2p_peer_id_and_embeds_the_key() {
    let a = id(5);
    let peer = a.to_libp2p().public().to_peer_id();
    assert_eq!(a.node_id().to_peer_id(), peer);
    assert_eq!(a.node_id().public_key(), a.public_key());
    let parsed: NodeId = a.node_id().to_string().parse().unwrap();
    assert_eq!(parsed, a.node_id());
    assert_eq!(NodeId::from_bytes(&a.node_id().to_bytes()).unwrap(), parsed);
    // A libp2p signature made with the converted keypair verifies with the dalek key, so the
    // two are one key.
    let sig = a.to_libp2p().sign(b"x").unwrap();
    let ed = a.to_libp2p().public().try_into_ed25519().unwrap();
    assert_eq!(ed.to_bytes(), a.public_key().to_bytes());
    assert!(ed.verify(b"x", &sig));
}

#[test]
fn node_id_rejects_garbage_and_hashed_ids() {
    assert!(NodeId::from_bytes(&[0u8; 10]).is_err());
    assert!(NodeId::from_bytes(&[1u8; 200]).is_err());
    // A sha256-multihash peer id (as for RSA keys) embeds no key and is refused.
    let mut hashed = vec![0x12, 0x20];
    hashed.extend_from_slice(&[7u8; 32]);
    assert!(NodeId::from_bytes(&hashed).is_err());
}

#[test]
fn key_file_round_trip_and_no_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/node.key");
    let a = Identity::create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = Identity::load(&path).unwrap();
    assert_eq!(a.node_id(), b.node_id());
    assert!(matches!(Identity::create(&path), Err(KeyError::Exists(_))));
    assert_eq!(Identity::load(&path).unwrap().node_id(), a.node_id());
}

#[test]
fn readable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    Identity::create(&path).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { .. }), "{mode:o}");
        assert!(err.to_string().contains("chmod 600"));
    }
}

#[test]
fn malformed_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    std::fs::write(&path, "not a key\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        Identity::load(&path),
        Err(KeyError::Malformed { .. })
    ));
}
