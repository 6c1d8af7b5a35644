"""Pure Flax models and their registry."""
from facejax.models.heads import Classifier, FaceNet, l2_normalize
from facejax.models.preprocessing import PREPROCESSING, Preprocessing
from facejax.models.registry import (MODELS, build_backbone, build_classifier,
                                     build_model, count_params, default_image_size)
