//! StageRunner behaviour: sessions are independent, bounded and evictable; positions are
//! checked; bad inputs are typed errors; activations survive the wire encoding; the synthetic
//! model and its byte-level tokenizer are deterministic and round-trip UTF-8.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::synth::{BOS_ID, SynthOptions, synth};
use shoal_model::{
    Activation, BackendChoice, Error, Manifest, RuntimeConfig, SamplingConfig, StageInput,
    StageOutput, StageRunner, Tokenizer,
};

fn small() -> SynthOptions {
    SynthOptions {
        layers: 2,
        hidden: 32,
        heads: 2,
        kv_heads: 1,
        vocab: 260,
        seed: 3,
        ..SynthOptions::default()
    }
}

fn model() -> (tempfile::TempDir, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let m = synth(&small(), dir.path(), false).unwrap();
    (dir, m)
}

fn logits(out: StageOutput) -> Vec<f32> {
    match out {
        StageOutput::Logits(l) => l.data,
        StageOutput::Hidden(_) => panic!("expected logits"),
    }
}

fn runner(dir: &std::path::Path, m: &Manifest, max_sessions: usize) -> StageRunner {
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        max_sessions,
        idle_timeout: Duration::from_secs(3600),
        ..RuntimeConfig::default()
    };
    StageRunner::load(dir, m, 0..m.planner_layers(), &cfg).unwrap()
}

#[test]
fn interleaved_sessions_do_not_share_caches() {
    let (dir, m) = model();
    let mut alone = runner(dir.path(), &m, 4);
    let a1 = logits(alone.run(1, StageInput::Tokens(vec![256, 10, 20])).unwrap());
    let a2 = logits(alone.run(1, StageInput::Tokens(vec![30])).unwrap());
    let mut both = runner(dir.path(), &m, 4);
    let b1 = logits(both.run(7, StageInput::Tokens(vec![256, 10, 20])).unwrap());
    both.run(8, StageInput::Tokens(vec![256, 99, 98, 97, 96]))
        .unwrap();
    let b2 = logits(both.run(7, StageInput::Tokens(vec![30])).unwrap());
    assert_eq!(a1, b1);
    assert_eq!(a2, b2);
    assert_eq!(both.session_len(7), Some(4));
    assert_eq!(both.session_len(8), Some(5));
}

#[test]
fn sessions_are_bounded_dropped_and_evicted() {
    let (dir, m) = model();
    let mut r = runner(dir.path(), &m, 2);
    r.run(1, StageInput::Tokens(vec![1])).unwrap();
    r.run(2, StageInput::Tokens(vec![2])).unwrap();
    let err = r.run(3, StageInput::Tokens(vec![3])).unwrap_err();
    assert!(matches!(err, Error::TooManySessions { max: 2 }), "{err}");
    assert!(r.drop_session(1));
    r.run(3, StageInput::Tokens(vec![3])).unwrap();
    assert_eq!(r.session_count(), 2);
    assert_eq!(r.evict_idle(Instant::now() + Duration::from_secs(7200)), 2);
    assert_eq!(r.session_count(), 0);
}

#[test]
fn run_at_checks_positions_and_restarts_at_zero() {
    let (dir, m) = model();
    let mut r = runner(dir.path(), &m, 4);
    let first = logits(r.run_at(5, 0, StageInput::Tokens(vec![256, 1, 2])).unwrap());
    r.run_at(5, 3, StageInput::Tokens(vec![4])).unwrap();
    let err = r.run_at(5, 9, StageInput::Tokens(vec![4])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SessionOutOfSync {
                session: 5,
                cached: 4,
                start: 9
            }
        ),
        "{err}"
    );
    assert_eq!(r.session_len(5), None, "a failed step drops the session");
    let again = logits(r.run_at(5, 0, StageInput::Tokens(vec![256, 1, 2])).unwrap());
    assert_eq!(first, again);
}

/// A speculative step: several positions at once with the logits of each, then a rollback
/// past the rejected ones; the logits match one-position steps on a fresh session (within
/// float reassociation), on both engines.
#[test]
fn verify_steps_give_every_position_and_roll_back() {
    let (dir, m) = model();
    for backend in [BackendChoice::Ort, BackendChoice::Tract] {
        let cfg = RuntimeConfig {
            backend,
            ..RuntimeConfig::default()
        };
        let mut r = StageRunner::load(dir.path(), &m, 0..m.planner_layers(), &cfg).unwrap();
        let v = m.dims.vocab;
        // Sequential reference: prompt, then 4 single tokens.
        let mut seq = Vec::new();
        r.run_at(1, 0, StageInput::Tokens(vec![256, 10, 20]))
            .unwrap();
        for (i, t) in [30u32, 40, 50, 60].into_iter().enumerate() {
            seq.push(logits(
                r.run_at(1, 3 + i, StageInput::Tokens(vec![t])).unwrap(),
            ));
        }
        // Speculative: prompt, then [30, 40, 51, 61] (two drafts wrong), roll back to 5 and
        // run [50, 60].
        r.run_at(2, 0, StageInput::Tokens(vec![256, 10, 20]))
            .unwrap();
        let four = logits(
            r.run_verify(2, 3, StageInput::Tokens(vec![30, 40, 51, 61]), 4)
                .unwrap(),
        );
        assert_eq!(four.len(), 4 * v);
        assert_eq!(r.session_len(2), Some(7));
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
        };
        assert!(close(&four[..v], &seq[0]), "{backend:?}: position 3");
        assert!(close(&four[v..2 * v], &seq[1]), "{backend:?}: position 4");
        let two = logits(
            r.run_verify(2, 5, StageInput::Tokens(vec![50, 60]), 2)
                .unwrap(),
        );
        assert_eq!(r.session_len(2), Some(7));
        assert!(
            close(&two[..v], &seq[2]),
            "{backend:?}: position 5 after rollback"
        );
        assert!(
            close(&two[v..], &seq[3]),
            "{backend:?}: position 6 after rollback"
        );
        // More outputs than positions is the caller's error, and drops the session.
        assert!(matches!(
            r.run_verify(2, 7, StageInput::Tokens(vec![1]), 2),
            Err(Error::BadInput(_))
        ));
        assert_eq!(r.session_len(2), None);
    }
}

/// A batched decode step of sessions with different cache lengths gives each the logits of
/// its step run alone, and leaves each cache as a lone step would (the next lone step agrees
/// too); a session that cannot join (wrong position) is refused before anything runs.
#[test]
fn batched_steps_match_lone_steps() {
    let (dir, m) = model();
    let mut alone = runner(dir.path(), &m, 8);
    let mut batched = runner(dir.path(), &m, 8);
    let prompts: [&[u32]; 3] = [&[256, 10], &[256, 20, 21, 22, 23], &[256, 30, 31, 32]];
    for (i, p) in prompts.iter().enumerate() {
        alone
            .run_at(i as u64, 0, StageInput::Tokens(p.to_vec()))
            .unwrap();
        batched
            .run_at(i as u64, 0, StageInput::Tokens(p.to_vec()))
            .unwrap();
    }
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
    };
    for round in 0..3u32 {
        let jobs: Vec<(u64, usize, StageInput)> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let start = p.len() + round as usize;
                (
                    i as u64,
                    start,
                    StageInput::Tokens(vec![40 + round + i as u32]),
                )
            })
            .collect();
        assert!(jobs.iter().all(|(s, p, i)| batched.batchable(*s, *p, i)));
        let outs = batched.run_batch(&jobs).unwrap();
        for ((session, start, input), out) in jobs.into_iter().zip(outs) {
            let lone = logits(alone.run_at(session, start, input).unwrap());
            assert!(
                close(&logits(out), &lone),
                "round {round}, session {session}"
            );
            assert_eq!(batched.session_len(session), alone.session_len(session));
        }
    }
    assert!(!batched.batchable(0, 1, &StageInput::Tokens(vec![1])));
    assert!(!batched.batchable(0, 5, &StageInput::Tokens(vec![1, 2])));
    assert!(
        batched
            .run_batch(&[(0, 1, StageInput::Tokens(vec![1]))])
            .is_err()
    );
}

#[test]
fn split_stages_take_and_give_hidden_states() {
    let (dir, m) = model();
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut front = StageRunner::load(dir.path(), &m, 0..2, &cfg).unwrap();
    let mut back = StageRunner::load(dir.path(), &m, 2..m.planner_layers(), &cfg).unwrap();
    let StageOutput::Hidden(h) = front.run(1, StageInput::Tokens(vec![256, 5, 6])).unwrap() else {
        panic!("front stage returns hidden states");
    };
    assert_eq!(h.shape, vec![1, 3, 32]);
    // Through the wire encoding and back.
    let h = Activation::from_le_bytes(h.shape.clone(), &h.to_le_bytes()).unwrap();
    let l = logits(back.run(1, StageInput::Hidden(h)).unwrap());
    assert_eq!(l.len(), 260, "last position only by default");
    let mut whole = runner(dir.path(), &m, 4);
    assert_eq!(
        l,
        logits(whole.run(1, StageInput::Tokens(vec![256, 5, 6])).unwrap())
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (dir, m) = model();
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut back = StageRunner::load(dir.path(), &m, 1..3, &cfg).unwrap();
    assert!(matches!(
        back.run(1, StageInput::Tokens(vec![1])),
        Err(Error::BadInput(_))
    ));
    let wrong = Activation::new(vec![1, 2, 31], vec![0.0; 62]).unwrap();
    assert!(matches!(
        back.run(1, StageInput::Hidden(wrong)),
        Err(Error::BadInput(_))
    ));
    let mut front = runner(dir.path(), &m, 4);
    assert!(matches!(
        front.run(1, StageInput::Tokens(vec![260])),
        Err(Error::BadInput(_))
    ));
    assert!(matches!(
        front.run(1, StageInput::Tokens(vec![])),
        Err(Error::BadInput(_))
    ));
    assert!(StageRunner::load(dir.path(), &m, 2..9, &cfg).is_err());
    assert!(Activation::from_le_bytes(vec![1, 1, 2], &[0u8; 7]).is_err());
    assert!(Activation::new(vec![2, 2], vec![0.0; 3]).is_err());
}

#[test]
fn synth_is_deterministic_and_seed_dependent() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let ma = synth(&small(), a.path(), false).unwrap();
    let mb = synth(&small(), b.path(), false).unwrap();
    let mc = synth(&SynthOptions { seed: 4, ..small() }, c.path(), false).unwrap();
    assert_eq!(ma.files, mb.files);
    assert_ne!(ma.files["layer_000.weights"], mc.files["layer_000.weights"]);
    // Tied: the head reads the embedding file and has no copy of it.
    assert!(
        ma.layers
            .last()
            .unwrap()
            .files
            .contains(&"embed.weights".to_owned())
    );
    Manifest::load(a.path())
        .unwrap()
        .verify_files(a.path())
        .unwrap();
    std::fs::write(a.path().join("layer_001.weights"), b"tampered").unwrap();
    assert!(matches!(
        ma.verify_files(a.path()),
        Err(Error::Checksum { .. })
    ));
}

#[test]
fn byte_tokenizer_round_trips_utf8_and_adds_bos() {
    let (dir, m) = model();
    let tok = Tokenizer::load(dir.path(), &m).unwrap().unwrap();
    let text = "héllo, wörld 🦀\n\ttabs";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], BOS_ID);
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    assert_eq!(&ids[1..], &bytes[..]);
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn generate_respects_max_tokens_and_stop_ids_on_both_backends() {
    let (dir, m) = model();
    let mut outs = Vec::new();
    for backend in [BackendChoice::Ort, BackendChoice::Tract] {
        let cfg = RuntimeConfig {
            backend,
            ..RuntimeConfig::default()
        };
        let mut r = StageRunner::load(dir.path(), &m, 0..m.planner_layers(), &cfg).unwrap();
        let mut req = GenerateRequest {
            prompt_ids: vec![256, 72, 105],
            max_tokens: 12,
            sampling: SamplingConfig::greedy(),
            stop_ids: vec![],
        };
        let full = generate(&mut r, 1, &req, |_| true).unwrap();
        assert_eq!(full.token_ids.len(), 12);
        assert_eq!(r.session_count(), 0, "generate drops its session");
        req.stop_ids = vec![full.token_ids[3]];
        let first_stop = full
            .token_ids
            .iter()
            .position(|t| *t == full.token_ids[3])
            .unwrap();
        let stopped = generate(&mut r, 1, &req, |_| true).unwrap();
        assert_eq!(stopped.token_ids, full.token_ids[..first_stop]);
        req.sampling = SamplingConfig {
            temperature: 1.0,
            top_k: 20,
            top_p: 0.9,
            seed: 42,
        };
        req.stop_ids.clear();
        outs.push((
            full.token_ids,
            generate(&mut r, 1, &req, |_| true).unwrap().token_ids,
        ));
    }
    assert_eq!(outs[0], outs[1], "ort and tract generate the same tokens");
}

#[test]
fn sliding_window_limits_attention_only_beyond_the_window() {
    use shoal_model::export::{ExportOptions, export};
    use shoal_model::synth::SynthWeights;
    let opts = small();
    let prompt: Vec<u32> = vec![256, 1, 2, 3, 4, 5, 6];
    let run = |window: Option<usize>| {
        let dir = tempfile::tempdir().unwrap();
        let arch = opts.arch().unwrap().with_sliding_window(window);
        let m = export(
            &arch,
            &mut SynthWeights::new(&opts).unwrap(),
            dir.path(),
            &ExportOptions::default(),
        )
        .unwrap();
        let mut r = runner(dir.path(), &m, 2);
        logits(r.run(1, StageInput::Tokens(prompt.clone())).unwrap())
    };
    let full = run(None);
    assert_eq!(
        full,
        run(Some(prompt.len())),
        "a window covering the prompt changes nothing"
    );
    assert_ne!(full, run(Some(2)), "a short window hides early tokens");
}

#[test]
fn chat_template_wraps_a_user_turn() {
    let (dir, m) = model();
    let tok = Tokenizer::load(dir.path(), &m).unwrap().unwrap();
    assert!(tok.has_chat_template());
    let ids = tok.encode_chat("  hi ").unwrap();
    assert_eq!(ids[0], BOS_ID, "the template writes the BOS token once");
    assert_eq!(tok.decode(&ids).unwrap(), "<|user|>\nhi\n<|assistant|>\n");
}

#[test]
fn runner_and_activations_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<StageRunner>();
    send::<Activation>();
    send::<Tokenizer>();
}

#[test]
fn manifest_figures_follow_the_dimensions() {
    let (_dir, m) = model();
    let d = &m.dims;
    let (h, q, kv, f, v) = (
        d.hidden,
        d.heads * d.head_dim,
        d.kv_heads * d.head_dim,
        d.intermediate,
        d.vocab,
    );
    let layer_weights = h * q + 2 * h * kv + q * h + 3 * h * f;
    let figs = m.figures();
    assert_eq!(figs.len(), d.layers + 2);
    assert_eq!(
        figs[0].read_bytes,
        (h * 4) as u64,
        "the embedding reads one row"
    );
    assert_eq!(figs[0].param_bytes, (v * h * 4) as u64);
    for l in &figs[1..=d.layers] {
        assert_eq!(l.flops, 2 * layer_weights as u64);
        // Matrices and two norms, plus small graph constants (RoPE frequencies, shapes, axes).
        let weights = ((layer_weights + 2 * h) * 4) as u64;
        assert!(
            (weights..weights + 1024).contains(&l.param_bytes),
            "{} vs {weights}",
            l.param_bytes
        );
        assert_eq!(l.read_bytes, l.param_bytes);
        assert_eq!(l.kv_bytes_per_token, (2 * kv * 4) as u64);
        assert_eq!(l.out_bytes, (h * 4) as u64);
    }
    let head = figs[d.layers + 1];
    assert_eq!(head.flops, (2 * v * h) as u64);
    let tied = ((v * h + h) * 4) as u64;
    assert!(
        (tied..tied + 64).contains(&head.param_bytes),
        "tied embedding + final norm"
    );
    assert_eq!(head.out_bytes, (v * 4) as u64);
}
