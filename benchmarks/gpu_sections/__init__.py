"""The sections of benchmarks/gpu_suite.py, one module per group, over a shared harness.

  harness     Budget (the wall-clock shares), Suite (rows to JSON lines, the markdown table),
              warm_up (a section's warm-ups in threads), fmt, error_text.
  workloads   the suite's models (random init, built once per process), their FLOPs per input
              from XLA's cost analysis, display names.
  votes       section_peak, section_votes (vote_throughput.peak_matmul; count_votes against
              jit(logits_fn) as vote_throughput.measure does).
  certify     section_certify, section_sequential (rsjax.certify, fixed n and sequential).
  train       section_train (train_throughput.make_config's steps, timed in budgeted rounds).
  eb          section_eb (eb_throughput.measure_certify, with FLOPs and the suite's rows).

Each section is `section_NAME(suite, budget, args)`, with gpu_suite.py's parsed flags. The modules
import the sibling benchmark scripts by name (vote_throughput, train_throughput, eb_throughput):
gpu_suite.py puts benchmarks/ and the checkout on sys.path before importing this package.
"""
