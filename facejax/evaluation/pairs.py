"""Verification of a model on a `VerificationPairs` set: embed every image once, then the 10-fold protocol."""
from __future__ import annotations

from facejax.evaluation.verification import evaluate


def evaluate_pairs(model_io, variables: dict, pairs, *, batch_size: int = 64, flip: str | None = None,
                   distance: str = 'euclidean', thresholds=None) -> dict:
  """model_io: anything with .model, .preprocessing, .image_size (facejax.train.tasks.ModelIO);
  pairs: facejax.data.VerificationPairs. -> `verification.evaluate` result, plus 'embeddings' [N, D]."""
  from facejax.inference.embed import embed_images, make_embed_fn
  embed_fn = make_embed_fn(model_io.model, variables, model_io.preprocessing, model_io.image_size, flip=flip or None)
  emb = embed_images(embed_fn, pairs.images, model_io.image_size, batch_size=batch_size)
  result = evaluate(emb[pairs.left], emb[pairs.right], pairs.issame, num_folds=int(pairs.fold.max()) + 1,
                    distance=distance, thresholds=thresholds, folds=pairs.fold)
  result['embeddings'] = emb
  return result
