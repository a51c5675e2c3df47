//! The HTTP API (next issue): SQL over HTTP, panels, GDPR requests, AI budgets.
