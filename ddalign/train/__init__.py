"""Supervised fine-tuning on (prompt, answer) pairs: the loss on answers only, full parameters or
LoRA, the evaluator's own prompt rendering. Used to grow the real pair and by `ddalign distill`."""

from ddalign.train.examples import Example, encode_examples
from ddalign.train.finetune import FineTuneSettings, TrainRecord, fine_tune
from ddalign.train.save import save_model

__all__ = ["Example", "FineTuneSettings", "TrainRecord", "encode_examples", "fine_tune", "save_model"]
