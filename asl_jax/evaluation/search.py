"""Candidate search: k nearest references per query, and the ASL gate.

Exact search is faiss's (`IndexFlatIP` on L2-normalised descriptors, so the
score is the cosine similarity).
"""

import dataclasses

import faiss
import numpy as np


@dataclasses.dataclass
class Candidates:
  """Flat list of (query index, reference index, score) candidate pairs."""
  query_index: np.ndarray      # int64 [M]
  reference_index: np.ndarray  # int64 [M]
  score: np.ndarray            # float32 [M]

  def select(self, keep: np.ndarray) -> "Candidates":
    return Candidates(self.query_index[keep], self.reference_index[keep],
                      self.score[keep])

  def __len__(self):
    return len(self.score)


def l2_normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(queries: np.ndarray, references: np.ndarray, k: int,
        metric: str = "ip") -> Candidates:
  """Exact k nearest references of each query with faiss.

  metric: "ip" (score = inner product) or "l2" (score = -squared distance,
  as the ISC descriptor track scores).
  """
  queries = np.ascontiguousarray(queries, np.float32)
  references = np.ascontiguousarray(references, np.float32)
  if queries.shape[1] != references.shape[1]:
    raise ValueError(f"Query descriptors have {queries.shape[1]} dimensions "
                     f"but references have {references.shape[1]}.")
  k = min(k, len(references))
  index = {"ip": faiss.IndexFlatIP, "l2": faiss.IndexFlatL2}[metric](
      references.shape[1])
  index.add(references)
  dist, idx = index.search(queries, k)
  score = dist if metric == "ip" else -dist
  q = np.repeat(np.arange(len(queries)), k)
  keep = idx.reshape(-1) >= 0
  return Candidates(q[keep], idx.reshape(-1)[keep].astype(np.int64),
                    score.reshape(-1)[keep])


def asl_gate(candidates: Candidates, query_gate_norm: np.ndarray,
             reference_gate_norm: np.ndarray) -> np.ndarray:
  """ASL's asymmetric gate (method.md §2.3): keep a candidate pair unless the
  query's gate-feature norm exceeds the reference's (ratio > 1 drops)."""
  return (query_gate_norm[candidates.query_index]
          <= reference_gate_norm[candidates.reference_index])
