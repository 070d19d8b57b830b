"""Offline stand-in for @rules_cc: thin wrappers over Bazel 4's native C++ rules.

Bazel 4's own tools (`@bazel_tools`, the autoconfigured `@local_config_cc`) load `@rules_cc//cc:defs.bzl`, and Bazel
would download rules_cc to serve that load. Debian's bazel-rules-cc is written for newer Bazel and fails to load
under Bazel 4, so WORKSPACE points `rules_cc` here instead. tfrobprune itself has no C++ targets.
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_import(**attrs):
    native.cc_import(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def fdo_prefetch_hints(**attrs):
    native.fdo_prefetch_hints(**attrs)

def fdo_profile(**attrs):
    native.fdo_profile(**attrs)

def objc_import(**attrs):
    native.objc_import(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)
