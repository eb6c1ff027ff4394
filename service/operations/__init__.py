"""Operations: metrics, logs, the refusal summary, health routes and the API document."""
