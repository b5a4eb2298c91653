//! The ring layer of ringmux.
