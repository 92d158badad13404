"""`facevoice corpus avspeech --csv avspeech_train.csv --clips DIR --out DIR`: AVSpeech's clips as a
corpus, the face nearest each row's published centre (training/corpus/video.py does the work)."""

from facevoice.training.corpus.video import add_avspeech_arguments as add_arguments
from facevoice.training.corpus.video import run_avspeech as run

__all__ = ["add_arguments", "run"]
