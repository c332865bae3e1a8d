"""Domain errors, defined once. Each carries a message a user can act on."""


class QwenChatError(Exception):
    """Base class: the message is meant for the user, never a stack trace."""


class ConfigError(QwenChatError):
    """config.yaml is invalid: the message names the key, the value and what is allowed."""


class ModelLoadError(QwenChatError):
    """The model could not be downloaded or loaded: the message says what to do."""


class GenerationError(QwenChatError):
    """Generation failed inside the worker thread; the original exception is chained."""


class ModelNotLoaded(GenerationError):
    """The model failed to load in the background: no reply can be generated until a restart."""


class NotFound(QwenChatError):
    """A conversation does not exist or belongs to another browser."""


class MessageTooLong(QwenChatError):
    """A message cannot fit in what the model reads (max_input_tokens): it is not stored."""


class StorageFull(QwenChatError):
    """The disk holding the history file is full: nothing more can be saved until space is freed."""


class GrammarError(QwenChatError, ValueError):
    """A constraint on a reply (a JSON schema, a tool's parameters) cannot be compiled: the
    message says why."""
