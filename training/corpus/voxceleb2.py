"""`facevoice corpus voxceleb2 --root DIR [--meta vox2_meta.csv] --out DIR`: VoxCeleb2's MP4 clips
as a corpus (training/corpus/video.py does the work)."""

from facevoice.training.corpus.video import add_voxceleb2_arguments as add_arguments
from facevoice.training.corpus.video import run_voxceleb2 as run

__all__ = ["add_arguments", "run"]
