"""The measured scenarios, one module each; every one fills a `ScenarioResult`."""
