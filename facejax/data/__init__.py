"""Data: synthetic faces/objects, identity folders, LFW pairs, and grain loaders."""
from facejax.data.lfw import VerificationPairs
from facejax.data.pipeline import eval_batches, train_loader
from facejax.data.synthetic import SyntheticFaces, SyntheticObjects, synthetic_pairs
