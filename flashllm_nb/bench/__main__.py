"""``python -m flashllm_nb.bench``: see :mod:`flashllm_nb.bench`."""

from flashllm_nb.bench import main

raise SystemExit(main())
