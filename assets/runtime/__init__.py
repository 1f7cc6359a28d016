"""The Dagster instance, run sweeping and retry: the only modules that use Dagster's private APIs
(`dagster._core`)."""
