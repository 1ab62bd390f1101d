"""One readable file per recipe: data, model, loss and metrics, top to bottom."""
