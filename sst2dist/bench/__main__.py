"""`python -m sst2dist.bench cold-start SPEC_JSON`: the child process `measure` starts to time a cold start."""

import sys

from sst2dist.bench.run import main

main(sys.argv[1:])
