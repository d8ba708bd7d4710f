//! Loads every scenario in `configs/scenarios/` and plans it with every strategy: the MILP
//! must succeed, be optimal, be no worse than any baseline, and match the oracle wherever the
//! oracle accepts the size.

use std::path::PathBuf;

use shoal_planner::{Objective, PlanError, Scenario, Strategy, plan};

fn suite() -> Vec<(String, Scenario)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/scenarios");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|e| e == "json") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.display().to_string(), s));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_suite_scenario_plans() {
    let all = suite();
    assert!(all.len() >= 5, "the suite has {} files", all.len());
    for (name, s) in &all {
        for objective in Objective::ALL {
            let best = plan(s, objective, Strategy::Milp).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(best.optimal, "{name} {objective}: not optimal");
            for strategy in [Strategy::Even, Strategy::Memory, Strategy::Greedy] {
                match plan(s, objective, strategy) {
                    Ok(p) => assert!(
                        best.cost_s <= p.cost_s * (1.0 + 1e-9),
                        "{name} {objective}: milp {} worse than {strategy} {}",
                        best.cost_s,
                        p.cost_s
                    ),
                    Err(PlanError::Infeasible { .. }) => {}
                    Err(e) => panic!("{name} {strategy}: {e}"),
                }
            }
            match plan(s, objective, Strategy::Exhaustive) {
                Ok(e) => {
                    let rel = (e.cost_s - best.cost_s).abs() / e.cost_s;
                    assert!(
                        rel <= 1e-9,
                        "{name} {objective}: milp {best:?} oracle {e:?}"
                    );
                }
                Err(PlanError::TooLarge { .. }) => {}
                Err(e) => panic!("{name} exhaustive: {e}"),
            }
        }
    }
}

#[test]
fn memory_tight_case_needs_three_devices() {
    let (_, s) = suite()
        .into_iter()
        .find(|(n, _)| n.contains("memory-tight"))
        .expect("a memory-tight scenario");
    for objective in Objective::ALL {
        let p = plan(&s, objective, Strategy::Milp).unwrap();
        assert!(p.stages.len() >= 3, "{objective}: {:?}", p.stages);
    }
}
