"""The training pipeline: data version → features → split → train → evaluate → export → gates
→ register, with every step recorded and unchanged steps reused from cache."""

from .spec import PipelineSpec, load_pipeline, parse_pipeline

__all__ = ["PipelineSpec", "load_pipeline", "parse_pipeline"]
