//! Typed errors of the planner. Every message is one line that names the field, device or
//! layer at fault, so the CLI can print it as the reason for a non-zero exit.

/// A scenario that cannot be read or whose values are invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {reason}")]
    Io {
        /// The file involved.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The text is not valid JSON for a scenario (includes unknown keys).
    #[error("scenario JSON: {reason}")]
    Parse {
        /// serde's message, with line and column.
        reason: String,
    },
    /// A value is out of range or refers to something that does not exist.
    #[error("{field}: {reason}")]
    Invalid {
        /// The path of the field, e.g. `links[2].loss`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why planning or evaluating a placement failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The scenario itself is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// No placement satisfies memory and link constraints.
    #[error("infeasible: {reason}")]
    Infeasible {
        /// Which device or layer cannot be placed, and why.
        reason: String,
    },
    /// A given placement breaks a rule (gap, unknown device, missing link, memory).
    #[error("invalid placement: {reason}")]
    Placement {
        /// The broken rule.
        reason: String,
    },
    /// The exhaustive oracle refuses a case beyond its documented size.
    #[error(
        "exhaustive search refused: {devices} devices x {layers} layers give {candidates} \
         candidate placements, above the limit of {limit}"
    )]
    TooLarge {
        /// Devices in the scenario.
        devices: usize,
        /// Layers in the model.
        layers: usize,
        /// Ordered device sequences times cut points (saturating).
        candidates: u128,
        /// [`crate::EXHAUSTIVE_LIMIT`].
        limit: u128,
    },
    /// HiGHS failed without a usable answer.
    #[error("solver: {0}")]
    Solver(String),
}
