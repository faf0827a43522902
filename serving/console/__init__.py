"""The console: a Streamlit page to watch and steer a rollout and to try the model."""
