"""Settings from LORADOCK_* environment variables and an optional YAML file (pydantic-settings).

Precedence, highest first: explicit overrides (command-line flags), environment, YAML file, defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

DEFAULT_BASE_MODEL = Path("models/SmolLM2-135M-Instruct")


class Settings(BaseSettings):
    """Everything configurable in loradock. Paths are relative to the working directory."""

    model_config = SettingsConfigDict(env_prefix="LORADOCK_", extra="forbid", yaml_file=None)

    base_model: Path = Field(DEFAULT_BASE_MODEL, description="Local HF model folder served as the base.")
    base_model_name: str | None = Field(None, description="Model id of the base in the API (default: folder name).")
    adapters_dir: Path = Field(Path("adapters"), description="Root of the adapter store.")
    db_url: str = Field("sqlite:///var/loradock.db", description="SQLAlchemy URL of the preference database.")
    rag_dir: Path = Field(Path("var/rag"), description="Where RAG collections (vector indexes) live.")
    api_key: SecretStr | None = Field(None, description="Bearer key required for inference when set.")
    admin_key: SecretStr | None = Field(None, description="Bearer key required for admin routes when set.")

    host: str = "127.0.0.1"
    port: int = 8000
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Engine dtype. auto: bfloat16 where the CPU has AVX-512 BF16 or AMX (vLLM's choice on "
                            "a GPU), else float32. float32 keeps greedy output token-identical to PEFT in float32.")
    max_loras: int = Field(32, description="Adapters that can run in one batch (slots; ~20 MB each at rank 16 here).")
    max_cpu_loras: int = Field(64, description="Adapters resident in the engine before LRU eviction.")
    max_lora_rank: int = Field(16, description="Largest adapter rank the engine accepts.")
    gpu_memory_utilization: float = Field(0.5, description="Fraction of device (NUMA node on CPU) memory.")
    kv_cache_space_gib: float | None = Field(
        None, description="KV cache size on CPU, GiB. Default: max_num_seqs x kv_tokens_per_seq tokens (at least "
                          "one max_model_len sequence).")
    kv_tokens_per_seq: int = Field(256, description="Context a typical sequence uses (prompt + answer), to size "
                                   "the CPU KV cache; longer ones still run (vLLM preempts when the cache is full).")
    max_model_len: int = Field(2048, description="Context length: prompt plus max_tokens.")
    max_num_seqs: int = Field(64, description="Sequences the engine schedules at once.")
    tensor_parallel_size: int = Field(1, description="Passed through to vLLM.")
    pipeline_parallel_size: int = Field(1, description="Passed through to vLLM.")
    enforce_eager: bool = Field(False, description="Run the model eagerly: no compilation (whatever `compile` says) "
                                "and no CUDA graphs.")
    compile: bool = Field(True, description="CPU: keep vLLM's compilation on with LoRA, loradock's LoRA ops in "
                          "the graph (served decode 1.2-1.5x eager here; docs/performance.md). Needs a C++ compiler "
                          "(else eager, logged); about 45 s more start-up. false: eager.")
    enable_lora: bool = Field(True, description="Serve adapters (false: the base only, for measuring what LoRA "
                              "support costs).")
    cpu_threads: int | None = Field(None, description="Torch threads of the CPU engine. Default: every core on "
                                    "a machine of up to 2 cores, else all cores but one (left to the API process).")
    onednn_primitive_cache: int = Field(64, ge=0, description="oneDNN primitives the CPU engine keeps (its "
                                        "ONEDNN_PRIMITIVE_CACHE_CAPACITY; oneDNN's own default, 1024, holds "
                                        "~300 MB more once varied batch shapes fill it).")

    pinned_adapters: list[str] = Field(default_factory=list, description="Adapters never evicted.")
    store_poll_seconds: float = Field(1.0, description="How often the server rescans the adapter store.")
    max_adapter_bytes: int = Field(512 * 1024 * 1024, description="Largest adapter weights file accepted.")
    keep_versions: int = Field(5, ge=1, description="Versions kept per adapter (older unused ones are deleted).")
    retire_idle_s: float = Field(10.0, ge=0, description="A version no name serves any more (replaced, removed) "
                                 "leaves the engine once its last request ended and it was idle this long.")
    engine_max_restarts: int = Field(3, ge=0, description="Engine restarts allowed within "
                                     "engine_restart_window_s; one more and the server exits non-zero.")
    engine_restart_window_s: float = Field(600.0, gt=0, description="Window for engine_max_restarts, seconds.")
    max_tokens_cap: int = Field(1024, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, description="max_tokens when a request gives none.")
    max_messages: int = Field(256, description="Most messages in one chat request.")
    max_body_bytes: int = Field(1024 * 1024, description="Largest request body.")
    max_waiting: int = Field(256, description="Requests queued beyond the running ones before 429.")
    max_n: int = Field(8, description="Largest n (choices per request).")
    metrics_key: SecretStr | None = Field(
        None, description="Bearer (or HTTP Basic password) key for /metrics, /docs and /openapi.json; "
                          "they are open when unset and metrics_open is true, like vLLM's.")
    metrics_open: bool = Field(True, description="False: without a metrics key, /metrics and /docs need the "
                                                 "admin key (the Docker image sets this).")
    insecure: bool = Field(False, description="Allow serving on a non-loopback address without API and admin "
                                              "keys (LORADOCK_INSECURE=1 or --insecure).")
    header_timeout_s: float = Field(10.0, gt=0, description="Close a connection whose request line and "
                                                            "headers take longer than this to arrive.")
    body_timeout_s: float = Field(30.0, gt=0, description="Answer 408 when a request body takes longer than "
                                                          "this to arrive.")
    keep_alive_s: int = Field(5, ge=1, description="Close an idle keep-alive connection after this.")
    test_fault_marker: str | None = Field(
        None, description="Tests only: a prompt containing this text fails mid-generation after 3 steps.")
    feedback_per_minute: int = Field(120, description="Feedback records one key may store per minute "
                                     "(a burst of as many, then a steady rate); 0 = no limit.")
    ray_dashboard_port: int = Field(8265, description="`serve --replicas`: Ray's dashboard port (on 127.0.0.1).")
    ray_metrics_port: int = Field(0, description="`serve --replicas`: Ray's Prometheus metrics port (on "
                                                 "127.0.0.1; 0 = Ray picks one).")

    @field_validator("max_lora_rank", "max_loras", "max_cpu_loras", "max_model_len", "max_tokens_cap",
                     "kv_tokens_per_seq")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"LORADOCK_{info.field_name.upper()} must be positive")
        return v

    @field_validator("kv_cache_space_gib", "cpu_threads")
    @classmethod
    def _positive_or_auto(cls, v: float | None, info: Any) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"LORADOCK_{info.field_name.upper()} must be positive (or unset for the default)")
        return v

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("LORADOCK_GPU_MEMORY_UTILIZATION must be in (0, 1]")
        return v

    @property
    def served_base_name(self) -> str:
        """The id clients use for the base model."""
        return self.base_model_name or self.base_model.resolve().name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a YAML file (optional), the environment, then non-None overrides."""
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"--config {config}: no such file")
    cls: type[Settings] = Settings
    if config is not None:
        cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": str(config)}})
    return cls(**{k: v for k, v in overrides.items() if v is not None})
