"""`python -m sst2dist.train` and `accelerate launch -m sst2dist.train`: the training loop's command line."""

import sys

from sst2dist.train.loop import main

sys.exit(main())
