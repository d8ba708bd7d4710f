//! proptest strategies that produce valid values of every wire message.

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use shoal_keys::{Identity, NodeId};
use shoal_protocol::*;

/// Size of the pool of fixed identities the strategies draw from.
pub(crate) const POOL: u8 = 8;

/// The fixed identity number `i` (deterministic key from a seed byte).
pub(crate) fn identity(i: u8) -> Identity {
    Identity::from_secret_bytes([i.wrapping_add(1); 32])
}

/// Node id of identity `i`.
pub(crate) fn node(i: u8) -> NodeId {
    identity(i).node_id()
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9/._ é-]{{0,{max}}}")).unwrap()
}

fn model_ref() -> impl Strategy<Value = ModelRef> {
    (text(40), any::<[u8; 32]>()).prop_map(|(name, manifest_sha256)| ModelRef {
        name,
        manifest_sha256,
    })
}

/// A capability announcement by identity `author`.
pub(crate) fn capability(author: u8) -> impl Strategy<Value = Capability> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(model_ref()),
        ),
        (
            1e3f64..1e15,
            proptest::option::of(1e3f64..1e12),
            any::<u64>(),
            0.0f64..1.0,
        ),
        proptest::option::of((
            any::<bool>(),
            proptest::option::of(0.0f64..=1.0),
            proptest::option::of(0.1f64..=1000.0),
        )),
        vec(text(60), 0..=4),
        proptest::option::of(any::<u16>()),
        proptest::option::of((1.0f64..=9.0, 0.0f64..=1.0)),
        proptest::option::of(vec((0u32..4, 1u32..4), 0..=8)),
        (
            proptest::option::of(-60.0f64..=200.0),
            proptest::option::of(0.01f64..0.99),
        ),
    )
        .prop_map(
            move |(
                (seq, timestamp_ms, model),
                (flops, mem_bw, mem_bytes, overhead_s),
                battery,
                listen_addrs,
                loss_probe_port,
                speculation,
                held,
                (temp_c, throttle),
            )| {
                Capability {
                    node: node(author),
                    seq,
                    timestamp_ms,
                    model,
                    flops,
                    mem_bw,
                    mem_bytes,
                    overhead_s,
                    battery: battery.map(|(on_battery, level, watts)| Battery {
                        on_battery,
                        level,
                        watts,
                    }),
                    listen_addrs,
                    loss_probe_port,
                    speculation: speculation.map(|(positions, share)| SpecFigures {
                        positions,
                        tokens_per_pass: 1.0 + share * (positions - 1.0),
                    }),
                    // Gaps and lengths, laid out as ascending disjoint ranges.
                    held: held.map(|steps| {
                        let mut next = 0;
                        steps
                            .into_iter()
                            .map(|(gap, len)| {
                                let a = next + gap;
                                next = a + len;
                                (a, next)
                            })
                            .collect()
                    }),
                    temp_c,
                    throttle,
                }
            },
        )
}

fn link_entry(to: NodeId) -> impl Strategy<Value = LinkEntry> {
    (
        0.0f64..2.0,
        0.0f64..0.5,
        proptest::option::of(1e3f64..1e10),
        proptest::option::of(0.0f64..=1.0),
        any::<u32>(),
        any::<u32>(),
        0.0f64..1e4,
    )
        .prop_map(
            move |(rtt_s, jitter_s, bandwidth_bps, loss, samples, loss_samples, age_s)| LinkEntry {
                to,
                rtt_s,
                jitter_s,
                bandwidth_bps,
                loss,
                samples,
                loss_samples,
                age_s,
                via: None,
            },
        )
}

/// A link report by identity `author`.
pub(crate) fn link_report(author: u8) -> impl Strategy<Value = LinkReport> {
    let peers: Vec<NodeId> = (0..POOL).filter(|&i| i != author).map(node).collect();
    (
        any::<u64>(),
        any::<u64>(),
        proptest::sample::subsequence(peers, 0..=usize::from(POOL) - 1),
    )
        .prop_flat_map(move |(seq, timestamp_ms, tos)| {
            let entries: Vec<_> = tos.into_iter().map(link_entry).collect();
            entries.prop_map(move |links| LinkReport {
                from: node(author),
                seq,
                timestamp_ms,
                links,
            })
        })
}

/// A plan by identity `author` (its coordinator).
pub(crate) fn plan(author: u8) -> impl Strategy<Value = Plan> {
    let others: Vec<u8> = (0..POOL).collect();
    (
        proptest::sample::subsequence(others, 1..=usize::from(POOL)).prop_shuffle(),
        btree_set(0..POOL, 0..4),
        (
            any::<u64>(),
            model_ref(),
            0.0f64..10.0,
            any::<bool>(),
            any::<u64>(),
        ),
        prop_oneof![Just(Objective::Latency), Just(Objective::Throughput)],
        prop_oneof![
            Just(PlanStrategy::Milp),
            Just(PlanStrategy::Even),
            Just(PlanStrategy::Memory),
            Just(PlanStrategy::Greedy),
            Just(PlanStrategy::Exhaustive)
        ],
    )
        .prop_flat_map(move |(stage_nodes, extra, head, objective, strategy)| {
            let n = stage_nodes.len();
            vec(1u32..20, n).prop_map(move |lens| {
                let (epoch, model, cost_s, optimal, timestamp_ms) = head.clone();
                let mut start = 0;
                let stages: Vec<Stage> = stage_nodes
                    .iter()
                    .zip(&lens)
                    .map(|(&i, &len)| {
                        let s = Stage {
                            node: node(i),
                            start,
                            end: start + len,
                        };
                        start += len;
                        s
                    })
                    .collect();
                let mut members: Vec<NodeId> = stage_nodes
                    .iter()
                    .chain(&extra)
                    .chain(std::iter::once(&author))
                    .map(|&i| node(i))
                    .collect();
                members.sort();
                members.dedup();
                // A prefetch order on every other epoch: the first stage's node, layer 0.
                let prefetch = stages
                    .first()
                    .filter(|_| epoch % 2 == 0)
                    .map(|s| Stage {
                        node: s.node,
                        start: 0,
                        end: 1,
                    })
                    .into_iter()
                    .collect();
                let below_floor = stages.first().filter(|_| epoch % 2 == 1).map(|s| s.node);
                Plan {
                    epoch,
                    coordinator: node(author),
                    model,
                    num_layers: start,
                    objective,
                    cost_s,
                    stages,
                    members,
                    strategy,
                    optimal,
                    timestamp_ms,
                    prefetch,
                    // A cause and the first stage's node below the floor on odd epochs.
                    cause: (epoch % 2 == 1).then(|| format!("epoch {epoch}: n{author} left")),
                    below_floor: below_floor.into_iter().collect(),
                }
            })
        })
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::Bf16),
        Just(DType::I64),
        Just(DType::I32),
        Just(DType::I8),
        Just(DType::U8),
    ]
}

/// A consistent tensor of at most a few kilobytes.
pub(crate) fn tensor(dtypes: BoxedStrategy<DType>) -> impl Strategy<Value = Tensor> {
    (dtypes, vec(0u32..6, 0..=MAX_RANK)).prop_flat_map(|(dtype, shape)| {
        let len = shape.iter().map(|&d| d as usize).product::<usize>() * dtype.size();
        vec(any::<u8>(), len).prop_map(move |data| Tensor {
            dtype,
            shape: shape.clone(),
            data,
        })
    })
}

/// An activation.
pub(crate) fn activation() -> impl Strategy<Value = Activation> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        0u32..MAX_SWARM as u32,
        any::<u32>(),
        tensor(dtype().boxed()),
        proptest::option::of(0u8..POOL),
        proptest::collection::vec(any::<u32>(), 0..=MAX_DRAFT),
    )
        .prop_map(
            |(epoch, session, step, stage, position, tensor, origin, draft)| Activation {
                epoch,
                session,
                step,
                stage,
                position,
                tensor,
                sample: None,
                reply_to: origin.map(|a| identity(a).node_id()),
                draft,
            },
        )
}

/// A token return (token or logits).
pub(crate) fn token_return() -> impl Strategy<Value = TokenReturn> {
    let floats = prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::Bf16)].boxed();
    let output = prop_oneof![
        any::<u32>().prop_map(Sampled::Token),
        tensor(floats).prop_map(Sampled::Logits),
        proptest::collection::vec(any::<u32>(), 1..=MAX_DRAFT + 1).prop_map(Sampled::Tokens),
    ];
    (any::<u64>(), any::<u64>(), any::<u64>(), output).prop_map(|(epoch, session, step, output)| {
        TokenReturn {
            epoch,
            session,
            step,
            output,
        }
    })
}

/// A session end.
pub(crate) fn session_end() -> impl Strategy<Value = SessionEnd> {
    (any::<u64>(), any::<u64>()).prop_map(|(epoch, session)| SessionEnd { epoch, session })
}

fn sampling() -> impl Strategy<Value = Sampling> {
    (0.0f32..4.0, any::<u32>(), 0.01f32..=1.0, any::<u64>()).prop_map(
        |(temperature, top_k, top_p, seed)| Sampling {
            temperature,
            top_k,
            top_p,
            seed,
        },
    )
}

/// A generation request.
pub(crate) fn generate_request() -> impl Strategy<Value = GenerateRequest> {
    (
        any::<u64>(),
        vec(any::<u32>(), 1..64),
        sampling(),
        1..=MAX_NEW_TOKENS,
        vec(any::<u32>(), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(session, prompt, sampling, max_tokens, stop, stream)| GenerateRequest {
                session,
                prompt,
                sampling,
                max_tokens,
                stop,
                stream,
            },
        )
}

/// A stream chunk.
pub(crate) fn token_chunk() -> impl Strategy<Value = TokenChunk> {
    (
        any::<u64>(),
        any::<u32>(),
        vec(any::<u32>(), 1..16),
        text(40),
    )
        .prop_map(|(session, index, tokens, text)| TokenChunk {
            session,
            index,
            tokens,
            text,
        })
}

/// A final result.
pub(crate) fn generate_result() -> impl Strategy<Value = GenerateResult> {
    (
        any::<u64>(),
        vec(any::<u32>(), 0..64),
        text(80),
        prop_oneof![Just(FinishReason::Length), Just(FinishReason::Stop)],
        any::<u32>(),
        0.0f64..1e4,
    )
        .prop_map(
            |(session, tokens, text, finish, prompt_tokens, elapsed_s)| GenerateResult {
                session,
                tokens,
                text,
                finish,
                prompt_tokens,
                elapsed_s,
            },
        )
}

/// A typed error reply.
pub(crate) fn error_reply() -> impl Strategy<Value = ErrorReply> {
    let code = prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::NoPlan),
        Just(ErrorCode::Busy),
        Just(ErrorCode::StageFailed),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::Refused),
        Just(ErrorCode::WrongModel),
        Just(ErrorCode::Internal),
    ];
    (proptest::option::of(any::<u64>()), code, text(100)).prop_map(|(session, code, message)| {
        ErrorReply {
            session,
            code,
            message,
        }
    })
}

/// A bandwidth probe.
pub(crate) fn bandwidth_probe() -> impl Strategy<Value = BandwidthProbe> {
    (
        any::<u64>(),
        0u32..=MAX_PROBE_PAYLOAD as u32,
        vec(any::<u8>(), 0..512),
    )
        .prop_map(|(nonce, reply_bytes, payload)| BandwidthProbe {
            nonce,
            reply_bytes,
            payload,
        })
}

/// A bandwidth probe reply.
pub(crate) fn bandwidth_probe_reply() -> impl Strategy<Value = BandwidthProbeReply> {
    (any::<u64>(), any::<u32>(), vec(any::<u8>(), 0..512)).prop_map(
        |(nonce, received_bytes, payload)| BandwidthProbeReply {
            nonce,
            received_bytes,
            payload,
        },
    )
}

/// A request for one chunk of a model file.
pub(crate) fn file_request() -> impl Strategy<Value = FileRequest> {
    (
        any::<[u8; 32]>(),
        0..MAX_FILE_BYTES,
        1u32..=MAX_FILE_CHUNK as u32,
    )
        .prop_map(|(sha256, offset, len)| FileRequest {
            sha256,
            offset,
            len,
        })
}

/// One chunk of a model file, somewhere inside a file of up to 1 GiB.
pub(crate) fn file_chunk() -> impl Strategy<Value = FileChunk> {
    (
        any::<[u8; 32]>(),
        0u64..1 << 30,
        vec(any::<u8>(), 0..512),
        0u64..1 << 20,
    )
        .prop_map(|(sha256, offset, data, after)| FileChunk {
            sha256,
            offset,
            total: offset + data.len() as u64 + after,
            data,
        })
}

/// A loss-probe datagram.
pub(crate) fn loss_probe() -> impl Strategy<Value = LossProbe> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(nonce, seq, sent_us, echo, busy, held_us)| LossProbe {
            nonce,
            seq,
            sent_us,
            echo,
            busy,
            held_us,
        })
}

/// A bandwidth-train datagram, up to the largest that fits [`MAX_TRAIN_DATAGRAM`].
pub(crate) fn train_probe() -> impl Strategy<Value = TrainProbe> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..1300),
    )
        .prop_map(|(nonce, train, seq, pad)| TrainProbe {
            nonce,
            train,
            seq,
            pad,
        })
}

/// A train ack.
pub(crate) fn train_ack() -> impl Strategy<Value = TrainAck> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        vec(any::<(u32, u32, u64)>(), 0..=MAX_ACK_EARLIER),
    )
        .prop_map(
            |(nonce, train, seq, bytes, recv_us, shared, earlier)| TrainAck {
                nonce,
                train,
                seq,
                bytes,
                recv_us,
                shared,
                earlier,
            },
        )
}
