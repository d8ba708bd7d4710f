# The test binaries of tests/ that judge measured figures or races between real processes
# (impaired links, speeds, failover deadlines, batches formed by arrival times, a browser's
# virtual time budget against a streamed answer, an emulated aarch64 node against start and
# plan deadlines). Sourced by
# scripts/test.sh, which runs them after the rest and one test at a time so that two of them
# never share the 2 cores, and by scripts/ci-soak.sh, which runs them again and again to
# measure how often each fails. A new test of that kind belongs in this list.
# shellcheck disable=SC2034
TIMING_TESTS=(
  netns_impairment
  netns_swarm
  netns_placement
  netns_prediction
  netns_failover
  netns_security
  netns_nat
  netns_speculation
  netns_layers
  soak
  pipeline_failover
  power
  concurrency
  speculation
  api_page
  arm_node
)
