//! Every TOML file in `configs/` parses as a node [`Config`]; the example documents exactly
//! the defaults. (`configs/scenarios/` holds the planner's JSON and is not a node config.)

use std::path::PathBuf;

use shoal_node::config::Config;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_config_file_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no config files found");
}

#[test]
fn the_example_shows_the_defaults() {
    let example = Config::load(&configs_dir().join("node.example.toml")).unwrap();
    assert_eq!(example, Config::default());
}
