__version__ = "0.1.0"

# A Part II companion plugs into its chapter through a registry the chapter offers (chapter 02's `ERROR_WORDS` and
# `MOVED` for the companion 02a; chapter 03's `ATTENTION_PATHS` and `DROPOUT_MASKS` for 03a; chapter 04's hook
# registry and `HookSet`, and 02's config checks, for 04a; chapter 05's `OPTIMIZERS`, `CHECKPOINT_PARTS`,
# `BUILD_CHECKS`, callbacks and `DIST_CONTEXTS` for 05c, 05d and 05e). It comes after the chapter in the book, so
# the chapter's module cannot import it.
# The package imports it instead, right after the chapter's module has run, so that `slm.config` behaves the same
# whichever module a program imports first. Nothing is imported before that (`slm --help` imports no chapter).
import sys as _sys

_COMPANIONS = {"slm.config": ("slm.config_errors",),   # a chapter's module -> its companions, imported right after it
               "slm.model": ("slm.speed",),
               "slm.hooks": ("slm.hook_configs",),
               "slm.training": ("slm.optimizers",),
               "slm.run_state": ("slm.runs", "slm.parallel")}


class _CompanionFinder:
    """A `sys.meta_path` finder: Python's own path finder finds a module of `_COMPANIONS`; once it has run, its
    companions are imported, in their order."""
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in _COMPANIONS: return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"): return spec
        run = spec.loader.exec_module
        def exec_module(module, companions=_COMPANIONS[name]):
            run(module)
            for companion in companions:
                if companion in _sys.modules:   # the chapter's module was reloaded: its registries are new and empty
                    import importlib
                    importlib.reload(_sys.modules[companion])
                else: __import__(companion)
        spec.loader.exec_module = exec_module
        return spec


if not any(getattr(f, "__name__", None) == "_CompanionFinder" for f in _sys.meta_path):
    _sys.meta_path.insert(0, _CompanionFinder)
