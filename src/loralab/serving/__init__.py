"""From a trained run to answers: evaluation, predictions, exports, the HTTP server."""
