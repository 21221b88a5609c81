"""Training: one entry point, `train`, for the methods lora | prefix | full | qlora.

from tuners import TuneConfig, train
result = train("smollm2-135m-instruct", examples, "out/adapter", TuneConfig(method="lora"))
"""

from tuners.common import TrainingAborted
from tuners.config import TuneConfig
from tuners.train import TrainResult, train

__all__ = ["TrainResult", "TrainingAborted", "TuneConfig", "train"]
