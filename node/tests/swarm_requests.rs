//! Requests on different protocols in flight at once between the same two nodes each get
//! their own answer. Every libp2p request-response behaviour numbers its requests from 1, so
//! a swarm that kept its pending requests by id alone handed one protocol's answer to the
//! other's caller, or dropped a caller when a second request reused its id.

#[path = "support/swarm.rs"]
mod support;

use std::time::Duration;

use shoal_node::swarm::Proto;
use shoal_protocol::{
    BandwidthProbe, BandwidthProbeReply, PipelineMessage, Sampled, Signed, TokenReturn, decode,
    encode,
};
use support::{identity, start_swarm, synth_model, wait_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_two_protocols_get_their_own_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path());
    let nodes = start_swarm(tmp.path(), 2, &model).await;
    let handles: Vec<_> = nodes.iter().map(|(h, _)| h).collect();
    wait_all(&handles, Duration::from_secs(30), "two members", |v| {
        v.members.len() == 2
    })
    .await;
    let (a, b) = (handles[0], handles[1]);
    let to = b.node_id().to_peer_id();

    // A token return that no generation of the receiver waits for is dropped with an empty
    // answer (its sender keeps its score), never a probe reply.
    let token = |session: u64| {
        let body = TokenReturn {
            epoch: 1,
            session,
            step: 0,
            output: Sampled::Token(7),
        };
        encode(&Signed::sign(&identity(0), body).unwrap()).unwrap()
    };
    assert!(PipelineMessage::decode(&token(1)).is_ok());
    let probe = |nonce: u64| {
        encode(&BandwidthProbe {
            nonce,
            reply_bytes: 8,
            payload: vec![0; 64],
        })
        .unwrap()
    };

    for round in 0..5u64 {
        let mut probes = Vec::new();
        let mut tokens = Vec::new();
        for i in 0..8u64 {
            let nonce = round * 100 + i;
            let net = a.net().clone();
            probes.push(tokio::spawn(async move {
                (nonce, net.request(to, Proto::Probe, probe(nonce)).await)
            }));
            let net = a.net().clone();
            let session = nonce + 1_000;
            tokens.push(tokio::spawn(async move {
                (
                    session,
                    net.request(to, Proto::Activation, token(session)).await,
                )
            }));
        }
        for p in probes {
            let (nonce, reply) = p.await.unwrap();
            let reply = reply.unwrap_or_else(|e| panic!("probe {nonce}: {e}"));
            let reply: BandwidthProbeReply = decode(&reply)
                .unwrap_or_else(|e| panic!("probe {nonce} got another protocol's answer: {e}"));
            assert_eq!(reply.nonce, nonce, "probe answers crossed");
        }
        for t in tokens {
            let (session, reply) = t.await.unwrap();
            let reply = reply.unwrap_or_else(|e| panic!("token {session}: {e}"));
            assert!(
                reply.is_empty(),
                "token {session} got another protocol's answer: {} bytes",
                reply.len()
            );
        }
    }
    let score = b.net().score(a.node_id().to_peer_id()).await.unwrap();
    assert!(!score.banned, "unawaited tokens cost no score: {score:?}");
    for (_, c) in nodes {
        c.cancel();
    }
}
