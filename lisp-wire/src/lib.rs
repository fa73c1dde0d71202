//! lisp-wire
