"""The variational autoencoder (Kingma & Welling 2014): a convolutional encoder to (μ, log σ²), a decoder, the ELBO."""
