"""``python -m maeprobe`` (also what torchrun launches: ``torchrun --nproc-per-node 8 -m maeprobe recipe run ...``)."""
from .cli import main

main()
