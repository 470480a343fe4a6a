"""Exceptions raised for user mistakes. Each message says what was wrong and how to fix it."""


class SekaError(ValueError):
    """Base class of every error seka-rag raises for bad input."""


class HighlightError(SekaError):
    """A highlight could not be located: bad markers, missing substring, empty or out-of-range span."""


class ProjectionError(SekaError):
    """A projection file is corrupt, or does not fit the model it is applied to."""


class UnsupportedModelError(SekaError):
    """The model's architecture is not in the table of supported families."""


class SteeringConfigError(SekaError):
    """Invalid gains, layers or heads."""


class ModelFilesMissingError(SekaError, FileNotFoundError):
    """An embedded model's wheel is not installed (the message names the install command)."""


class ModelIntegrityError(SekaError):
    """An embedded model's assembled file does not have the expected sha256."""


class InspectionError(SekaError):
    """Bad arguments to ``seka-rag inspect`` / :mod:`seka_rag.inspect` (heads, texts, counts)."""


def missing_extra(exc: ModuleNotFoundError, package: str, extra: str) -> ModuleNotFoundError:
    """The error to raise when importing an integration failed: names the extra to install when the
    missing module is the framework ``package`` (e.g. ``"langchain_core"``), else ``exc`` itself."""
    if exc.name and (exc.name == package or exc.name.startswith(package + ".")):
        return ModuleNotFoundError(
            f"this integration needs {package.replace('_', '-').replace('.', '-')}: install seka-rag with its "
            f"[{extra}] extra (in a checkout of seka-rag: pip install \".[{extra}]\")",
            name=exc.name,
        )
    return exc
