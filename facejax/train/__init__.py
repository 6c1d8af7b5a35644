"""One trainer, three tasks (classify, distill, siamese)."""
from facejax.train.config import base_config, stage_config
from facejax.train.loop import train
