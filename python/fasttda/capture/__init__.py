"""Per-example gradient capture: hooks, per-example loss, module selection and layout.

* `GradientCapture`: context manager; ``cap.features(**batch)`` runs forward and backward
  and returns ``[B, total_dim]`` float32 features.
* `CaptureHooks`: the same hooks for your own training loop (``pop_features()`` after backward).
* `Projection` (`Factored`, `Dense`, `Raw`): the projection spec, also what stores record;
  ``projection=None`` gives raw per-example gradients.
* `CaptureLayout`/`ModuleBlock`: module name → column slice, JSON via ``to_dict()``.
* `per_example_loss`, `module_seed`, `select_modules`.
"""
from fasttda.capture.gradient_capture import GradientCapture
from fasttda.capture.hooks import CaptureHooks
from fasttda.capture.loss import per_example_loss, position_ids_from_mask
from fasttda.capture.modules import CaptureLayout, ModuleBlock, capturable_modules, module_seed, select_modules
from fasttda.capture.projection import Dense, Factored, Projection, Raw

__all__ = [
    "CaptureHooks", "CaptureLayout", "Dense", "Factored", "GradientCapture", "ModuleBlock", "Projection", "Raw",
    "capturable_modules", "module_seed", "per_example_loss", "position_ids_from_mask", "select_modules",
]
