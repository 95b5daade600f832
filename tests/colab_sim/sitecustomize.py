"""Python imports this at start-up in the simulated Colab kernel (and in what it runs): install Colab's image."""

import colab_image

colab_image.install()
