"""Answer-file converters for benchmarks scored elsewhere: GQA, MMBench (submission xlsx), MM-Vet (grader
JSON), SEED-Bench. Each module has `main(argv=None)` with the original script's flags."""
