//! A private swarm: nodes sharing a pre-shared key (libp2p pnet, TCP only) form a swarm; a
//! node without the key cannot even complete a handshake, so it never becomes a member.

#[path = "support/swarm.rs"]
mod support;

use std::time::Duration;

use shoal_node::start::Node;
use support::{fast_config, identity, synth_model, wait_all};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_without_the_key_stay_out() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path());
    let psk = tmp.path().join("swarm.key");
    std::fs::write(
        &psk,
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "7e".repeat(32)),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let start = |i: usize, key: bool, boot: Option<String>| {
        let mut cfg = fast_config(&tmp.path().join(format!("n{i}")), Some(model.clone()));
        cfg.psk_file = key.then(|| psk.clone());
        cfg.bootstrap.extend(boot);
        Node::start_with_identity(cfg, identity(i), cancel.clone())
    };
    let a = start(0, true, None).await.unwrap();
    let boot = a.listen_addrs()[0].to_string();
    let b = start(1, true, Some(boot.clone())).await.unwrap();
    let outsider = start(2, false, Some(boot)).await.unwrap();

    wait_all(
        &[&a, &b],
        Duration::from_secs(30),
        "a plan over the two keyed nodes",
        |v| v.plan().is_some_and(|p| p.members.len() == 2),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for h in [&a, &b] {
        let v = h.snapshot();
        assert_eq!(v.members.len(), 2, "an outsider got in");
        assert!(!v.member_ids().contains(&outsider.node_id()));
    }
    assert_eq!(outsider.snapshot().member_ids(), vec![outsider.node_id()]);
    assert!(outsider.net().connected_peers().await.unwrap().is_empty());
    cancel.cancel();
}
