"""Errors a user can hit. Each message says what is wrong and what to do about it."""


class AscentError(Exception):
    """Base of the errors shown to users as one line (st.error, or the CLI's stderr)."""


class DatasetError(AscentError):
    """An upload that cannot become a dataset; nothing was written."""


class ConfigError(AscentError):
    """A run configuration that cannot be trained (unknown model, wrong task...)."""


class NotFoundError(AscentError):
    """A dataset, run or artifact id that does not exist."""


class ExportError(AscentError):
    """The model could not be exported or the export does not match PyTorch."""


class PredictError(AscentError):
    """Input a model cannot take."""


class AccessError(AscentError):
    """Not signed in, a wrong password, or a role that may not do this."""


def settings_error(exc: Exception) -> str:
    """A pydantic validation error as one line: "field: what is wrong", or the whole check's
    message when it concerns several settings; any other error as it reads."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    where = ".".join(map(str, first["loc"]))
    if where and getattr(exc, "title", "") == "Settings":  # an environment variable
        where = f"ASCENT_{where.upper()}"
    return f"{where}: {message}" if where else message
