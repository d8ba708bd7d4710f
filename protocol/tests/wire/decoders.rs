//! Every decoder of the crate, run on one input; and a corpus of valid frames of every kind.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use shoal_protocol::*;

use crate::strategies::{self, identity};

/// Runs every decoder (each type unsigned and signed, the topic and protocol dispatchers,
/// `peek`) on `bytes`; returns how many decoders ran and how many accepted.
pub(crate) fn run_all(bytes: &[u8]) -> (usize, usize) {
    let results = [
        decode::<Capability>(bytes).is_ok(),
        decode::<Signed<Capability>>(bytes).is_ok(),
        decode::<LinkReport>(bytes).is_ok(),
        decode::<Signed<LinkReport>>(bytes).is_ok(),
        decode::<Plan>(bytes).is_ok(),
        decode::<Signed<Plan>>(bytes).is_ok(),
        decode::<Activation>(bytes).is_ok(),
        decode::<Signed<Activation>>(bytes).is_ok(),
        decode::<TokenReturn>(bytes).is_ok(),
        decode::<Signed<TokenReturn>>(bytes).is_ok(),
        decode::<SessionEnd>(bytes).is_ok(),
        decode::<Signed<SessionEnd>>(bytes).is_ok(),
        decode::<GenerateRequest>(bytes).is_ok(),
        decode::<TokenChunk>(bytes).is_ok(),
        decode::<GenerateResult>(bytes).is_ok(),
        decode::<ErrorReply>(bytes).is_ok(),
        decode::<BandwidthProbe>(bytes).is_ok(),
        decode::<BandwidthProbeReply>(bytes).is_ok(),
        decode::<LossProbe>(bytes).is_ok(),
        decode::<TrainProbe>(bytes).is_ok(),
        decode::<TrainAck>(bytes).is_ok(),
        decode::<FileRequest>(bytes).is_ok(),
        decode::<FileChunk>(bytes).is_ok(),
        FileResponse::decode(bytes).is_ok(),
        Topic::Capability.decode(bytes).is_ok(),
        Topic::Links.decode(bytes).is_ok(),
        Topic::Plan.decode(bytes).is_ok(),
        PipelineMessage::decode(bytes).is_ok(),
        GenerateResponse::decode(bytes).is_ok(),
        peek(bytes).is_ok(),
    ];
    (results.len(), results.iter().filter(|&&ok| ok).count())
}

fn sample<S: Strategy>(runner: &mut TestRunner, s: S) -> S::Value {
    match s.new_tree(runner) {
        Ok(tree) => tree.current(),
        Err(e) => panic!("strategy failed: {e}"),
    }
}

/// `per_kind` valid frames of every kind, unsigned and (for signed kinds) signed, from a
/// fixed seed.
pub(crate) fn corpus(per_kind: usize) -> Vec<Vec<u8>> {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut r = TestRunner::new_with_rng(Config::default(), rng);
    let mut out = Vec::new();
    for i in 0..per_kind {
        let a = (i % usize::from(strategies::POOL)) as u8;
        let id = identity(a);
        let cap = sample(&mut r, strategies::capability(a));
        let links = sample(&mut r, strategies::link_report(a));
        let plan = sample(&mut r, strategies::plan(a));
        let act = sample(&mut r, strategies::activation());
        let tok = sample(&mut r, strategies::token_return());
        let end = sample(&mut r, strategies::session_end());
        let frames = [
            encode(&cap),
            encode(&Signed::sign(&id, cap).unwrap()),
            encode(&links),
            encode(&Signed::sign(&id, links).unwrap()),
            encode(&plan),
            encode(&Signed::sign(&id, plan).unwrap()),
            encode(&act),
            encode(&Signed::sign(&id, act).unwrap()),
            encode(&tok),
            encode(&Signed::sign(&id, tok).unwrap()),
            encode(&end),
            encode(&Signed::sign(&id, end).unwrap()),
            encode(&sample(&mut r, strategies::generate_request())),
            encode(&sample(&mut r, strategies::token_chunk())),
            encode(&sample(&mut r, strategies::generate_result())),
            encode(&sample(&mut r, strategies::error_reply())),
            encode(&sample(&mut r, strategies::bandwidth_probe())),
            encode(&sample(&mut r, strategies::bandwidth_probe_reply())),
            encode(&sample(&mut r, strategies::loss_probe())),
            encode(&sample(&mut r, strategies::train_probe())),
            encode(&sample(&mut r, strategies::train_ack())),
            encode(&sample(&mut r, strategies::file_request())),
            encode(&sample(&mut r, strategies::file_chunk())),
        ];
        out.extend(frames.into_iter().map(|f| f.unwrap()));
    }
    out
}
