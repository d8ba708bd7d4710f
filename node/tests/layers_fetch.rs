//! Fetching model files between in-process nodes over loopback TCP (`/shoal/layers/1`): a
//! fetch whose holder dies half-way resumes from another holder and the file is whole; a holder
//! whose copy is corrupt serves bytes that fail the manifest's sha256, so the file is fetched
//! again from an honest holder, the corrupt one loses score, and no corrupt byte is ever kept
//! under the file's name; a file nobody holds fails with a clear error.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/swarm.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_node::layers::disk::{ModelFile, layer_files};
use shoal_node::layers::fetch::{CHUNK, FetchError, Pacer, Source, fetch_file, part_path};
use shoal_node::start::{Node, Running};
use support::{fast_config, identity, synth_model, wait_all};
use tokio_util::sync::CancellationToken;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

async fn start(
    root: &Path,
    i: usize,
    model: Option<PathBuf>,
    boot: Option<String>,
) -> (Running, CancellationToken) {
    let mut cfg = fast_config(&root.join(format!("node{i}")), model);
    cfg.bootstrap.extend(boot);
    let cancel = CancellationToken::new();
    let node = Node::start_with_identity(cfg, identity(i), cancel.clone())
        .await
        .expect("start node");
    (node, cancel)
}

/// The largest decoder-layer file of the model.
fn big_file(model: &Path) -> ModelFile {
    let m = shoal_model::Manifest::load(model).unwrap();
    layer_files(&m, 1, m.layers.len() - 1)
        .into_iter()
        .max_by_key(|f| std::fs::metadata(model.join(&f.name)).unwrap().len())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_resume_after_a_holder_dies_and_refuse_corrupt_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path());
    let copy = tmp.path().join("copy");
    copy_dir(&model, &copy);
    let (a, a_stop) = start(tmp.path(), 0, Some(model.clone()), None).await;
    let boot = Some(a.listen_addrs()[0].to_string());
    let (b, _b_stop) = start(tmp.path(), 1, Some(copy.clone()), boot.clone()).await;
    let (c, _c_stop) = start(tmp.path(), 2, None, boot).await;
    wait_all(
        &[&a, &b, &c],
        Duration::from_secs(30),
        "three members",
        |v| v.members.len() == 3,
    )
    .await;
    let file = big_file(&model);
    let size = std::fs::metadata(model.join(&file.name)).unwrap().len();
    assert!(size > 2 * u64::from(CHUNK), "{} is {size} bytes", file.name);
    let want = std::fs::read(model.join(&file.name)).unwrap();

    // Corrupt copy on b: one flipped byte in the middle of another decoder file.
    let m = shoal_model::Manifest::load(&model).unwrap();
    let other = layer_files(&m, 2, 3)
        .into_iter()
        .find(|f| f.name.ends_with(".onnx") && *f != file)
        .unwrap_or_else(|| layer_files(&m, 2, 3).remove(0));
    let mut bytes = std::fs::read(copy.join(&other.name)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(copy.join(&other.name), &bytes).unwrap();

    // 1. b is asked first and serves its corrupt copy; a serves the real one.
    let into = tmp.path().join("fetched");
    let src = |r: &Running| Source {
        peer: r.node_id(),
        rate_bps: None,
    };
    let report = fetch_file(
        c.net(),
        &into,
        &other,
        &[src(&b), src(&a)],
        &Pacer::default(),
    )
    .await
    .expect("fetch despite a corrupt holder");
    assert_eq!(
        std::fs::read(into.join(&other.name)).unwrap(),
        std::fs::read(model.join(&other.name)).unwrap()
    );
    assert!(report.rejected.contains(&b.node_id()), "{report:?}");
    assert!(!part_path(&into.join(&other.name)).exists());
    let score = c.net().score(b.node_id().to_peer_id()).await.unwrap();
    assert!(
        score.app < 0.0,
        "the corrupt holder keeps its score: {score:?}"
    );
    // Asked of b alone, the corrupt file never lands under its name.
    let alone = tmp.path().join("alone");
    let err = fetch_file(c.net(), &alone, &other, &[src(&b)], &Pacer::default())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NoSource { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    assert!(!alone.join(&other.name).exists());

    // 2. Paced so that the file takes about 4 s; a dies once a third of it has arrived.
    let rate = size as f64 * 8.0 / 4.0;
    let paced = |r: &Running| Source {
        peer: r.node_id(),
        rate_bps: Some(rate),
    };
    let sources = [paced(&a), paced(&b)];
    let part = part_path(&into.join(&file.name));
    let net = c.net().clone();
    let (into2, file2) = (into.clone(), file.clone());
    let job =
        tokio::spawn(
            async move { fetch_file(&net, &into2, &file2, &sources, &Pacer::default()).await },
        );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < size / 3 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        assert!(!job.is_finished(), "finished before a died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a_stop.cancel();
    let report = job.await.unwrap().expect("the fetch resumes from b");
    assert_eq!(std::fs::read(into.join(&file.name)).unwrap(), want);
    assert!(report.switches >= 1, "{report:?}");
    assert!(
        report.peers.contains(&a.node_id()) && report.peers.contains(&b.node_id()),
        "{report:?}"
    );
    assert!(
        report.bytes < size + u64::from(CHUNK),
        "resumed, not restarted: {report:?}"
    );

    // 3. A file nobody holds.
    let ghost = ModelFile {
        name: "ghost.onnx".into(),
        sha256: [7; 32],
    };
    let err = fetch_file(c.net(), &into, &ghost, &[src(&b)], &Pacer::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not held"), "{err}");
}
