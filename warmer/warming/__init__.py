"""Making images cloneable where Cinder needs them."""
