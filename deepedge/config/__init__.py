"""Configuration: a TOML file, ``DEEPEDGE_*`` environment variables and CLI flags, in that
order of precedence."""

from deepedge.config._load import DEFAULT_CONFIG_PATH, ConfigError, LoadedConfig, load_config, read_toml
from deepedge.config._model import (
    BUILTIN_MODELS,
    BrokerConfig,
    ClusterConfig,
    Config,
    CoordinatorConfig,
    LcApp,
    LogConfig,
    NodeConfig,
    TrainingConfig,
)
from deepedge.config._show import render_json, render_toml

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_CONFIG_PATH",
    "BrokerConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "CoordinatorConfig",
    "LcApp",
    "LoadedConfig",
    "LogConfig",
    "NodeConfig",
    "TrainingConfig",
    "load_config",
    "read_toml",
    "render_json",
    "render_toml",
]
