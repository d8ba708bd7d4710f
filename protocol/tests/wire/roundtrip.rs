//! Property tests: every message round-trips, and truncated or bit-flipped frames of it are
//! refused (or, for unsigned kinds, decode to something that is itself valid) without panic.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use shoal_keys::Identity;
use shoal_protocol::*;

use crate::strategies::{self, POOL, identity};

/// Bit flips to apply: (position, xor mask); a zero mask is turned into 1.
type Flips = Vec<(Index, u8)>;

fn flip(bytes: &[u8], flips: &Flips) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (at, mask) in flips {
        out[at.index(bytes.len())] ^= (*mask).max(1);
    }
    out
}

fn check_unsigned<T: Message + PartialEq + Debug>(
    msg: &T,
    cut: Index,
    flips: &Flips,
) -> Result<(), TestCaseError> {
    let bytes = encode(msg).unwrap();
    let back: T = decode(&bytes).unwrap();
    prop_assert_eq!(&back, msg);
    prop_assert_eq!(
        encode(&back).unwrap(),
        bytes.clone(),
        "encoding is not canonical"
    );
    prop_assert_eq!(
        peek(&bytes).unwrap(),
        Header {
            kind: T::KIND,
            signed: false
        }
    );

    let short = &bytes[..cut.index(bytes.len())];
    prop_assert!(decode::<T>(short).is_err(), "a truncated frame decoded");

    if let Ok(v) = decode::<T>(&flip(&bytes, flips)) {
        // Whatever a flipped frame decodes to has passed validation and can be re-sent.
        prop_assert!(encode(&v).is_ok());
    }
    Ok(())
}

fn check_signed<T: Message + PartialEq + Debug + Clone>(
    id: &Identity,
    body: &T,
    cut: Index,
    flips: &Flips,
) -> Result<(), TestCaseError> {
    let signed = Signed::sign(id, body.clone()).unwrap();
    let bytes = encode(&signed).unwrap();
    let back: Signed<T> = decode(&bytes).unwrap();
    prop_assert_eq!(&back, &signed);
    prop_assert_eq!(back.verify().unwrap(), body);
    prop_assert_eq!(back.signer(), &id.node_id());
    prop_assert_eq!(
        peek(&bytes).unwrap(),
        Header {
            kind: T::KIND,
            signed: true
        }
    );
    // The unsigned decoder refuses the signed frame and the reverse.
    let wrong = decode::<T>(&bytes).map(drop).map_err(|e| e.reason());
    prop_assert_eq!(wrong, Err("wrong_kind"));

    let short = &bytes[..cut.index(bytes.len())];
    prop_assert!(
        decode::<Signed<T>>(short).is_err(),
        "a truncated frame decoded"
    );

    // A flipped signed frame either fails to decode or verify, or is exactly the original.
    let flipped = flip(&bytes, flips);
    if let Ok(s) = decode::<Signed<T>>(&flipped)
        && s.verify().is_ok()
    {
        prop_assert_eq!(s.unverified(), body);
        prop_assert_eq!(s.signer(), &id.node_id());
    }
    Ok(())
}

fn flips() -> impl Strategy<Value = Flips> {
    proptest::collection::vec((any::<Index>(), any::<u8>()), 1..4)
}

fn signer_and<S: Strategy, F: Fn(u8) -> S>(f: F) -> impl Strategy<Value = (u8, S::Value)> {
    (0..POOL).prop_flat_map(move |a| (Just(a), f(a)))
}

proptest! {
    #[test]
    fn capability((a, m) in signer_and(strategies::capability), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
        check_signed(&identity(a), &m, cut, &fl)?;
        let bytes = encode(&Signed::sign(&identity(a), m.clone()).unwrap()).unwrap();
        let GossipMessage::Capability(s) = Topic::Capability.decode(&bytes).unwrap() else {
            panic!("wrong variant");
        };
        prop_assert_eq!(s.unverified(), &m);
        prop_assert!(Topic::Plan.decode(&bytes).is_err());
    }

    #[test]
    fn link_report((a, m) in signer_and(strategies::link_report), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
        check_signed(&identity(a), &m, cut, &fl)?;
        let bytes = encode(&Signed::sign(&identity(a), m.clone()).unwrap()).unwrap();
        let msg = GossipMessage::decode(LINKS_TOPIC, &bytes).unwrap();
        prop_assert_eq!(msg.topic(), Topic::Links);
        prop_assert_eq!(msg.encode().unwrap(), bytes);
    }

    #[test]
    fn plan((a, m) in signer_and(strategies::plan), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
        check_signed(&identity(a), &m, cut, &fl)?;
        let bytes = encode(&Signed::sign(&identity(a), m.clone()).unwrap()).unwrap();
        let GossipMessage::Plan(s) = Topic::Plan.decode(&bytes).unwrap() else {
            panic!("wrong variant");
        };
        prop_assert_eq!(s.verify().unwrap(), &m);
        for (i, stage) in m.stages.iter().enumerate() {
            prop_assert_eq!(m.stage_of(&stage.node), Some(i));
        }
    }

    #[test]
    fn activation(a in 0..POOL, m in strategies::activation(), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
        check_signed(&identity(a), &m, cut, &fl)?;
        let msg = PipelineMessage::Activation(Signed::sign(&identity(a), m.clone()).unwrap());
        let back = PipelineMessage::decode(&msg.encode().unwrap()).unwrap();
        prop_assert_eq!(back.epoch_session(), (m.epoch, m.session));
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn token_return(a in 0..POOL, m in strategies::token_return(), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
        check_signed(&identity(a), &m, cut, &fl)?;
        let msg = PipelineMessage::Token(Signed::sign(&identity(a), m).unwrap());
        prop_assert_eq!(PipelineMessage::decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn session_end(a in 0..POOL, m in strategies::session_end(), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
        check_signed(&identity(a), &m, cut, &fl)?;
        let msg = PipelineMessage::End(Signed::sign(&identity(a), m).unwrap());
        prop_assert_eq!(PipelineMessage::decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn generate_request(m in strategies::generate_request(), cut: Index, fl in flips()) {
        check_unsigned(&m, cut, &fl)?;
    }

    #[test]
    fn generate_responses(
        c in strategies::token_chunk(),
        d in strategies::generate_result(),
        e in strategies::error_reply(),
        cut: Index,
        fl in flips(),
    ) {
        check_unsigned(&c, cut, &fl)?;
        check_unsigned(&d, cut, &fl)?;
        check_unsigned(&e, cut, &fl)?;
        for r in [GenerateResponse::Chunk(c), GenerateResponse::Done(d), GenerateResponse::Error(e)] {
            let back = GenerateResponse::decode(&r.encode().unwrap()).unwrap();
            prop_assert_eq!(back.is_last(), !matches!(r, GenerateResponse::Chunk(_)));
            prop_assert_eq!(back, r);
        }
    }

    #[test]
    fn probes(
        b in strategies::bandwidth_probe(),
        r in strategies::bandwidth_probe_reply(),
        l in strategies::loss_probe(),
        t in strategies::train_probe(),
        a in strategies::train_ack(),
        cut: Index,
        fl in flips(),
    ) {
        check_unsigned(&b, cut, &fl)?;
        check_unsigned(&r, cut, &fl)?;
        check_unsigned(&l, cut, &fl)?;
        check_unsigned(&t, cut, &fl)?;
        check_unsigned(&a, cut, &fl)?;
        prop_assert!(encode(&l).unwrap().len() <= MAX_LOSS_PROBE_BYTES);
        prop_assert!(encode(&a).unwrap().len() <= MAX_TRAIN_ACK_BYTES);
    }

    #[test]
    fn files(
        q in strategies::file_request(),
        c in strategies::file_chunk(),
        e in strategies::error_reply(),
        cut: Index,
        fl in flips(),
    ) {
        check_unsigned(&q, cut, &fl)?;
        check_unsigned(&c, cut, &fl)?;
        for r in [FileResponse::Chunk(c), FileResponse::Error(e)] {
            let back = FileResponse::decode(&r.encode().unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}
