"""Shell completion generated from the argparse tree, so it never falls behind the verbs."""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    """The option strings of ``parser`` and, for options with fixed choices, those choices."""
    options, choices = [], {}
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--")]
        if action.option_strings and action.choices:
            for option in action.option_strings:
                choices[option] = [str(c) for c in action.choices]
    return sorted(options), choices


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash script completing verbs, each verb's options and their choices (files otherwise)."""
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    cases, values = [], []
    for verb, sub in verbs.items():
        options, choices = _words(sub)
        cases.append(f'        {verb}) opts="{" ".join(options)}" ;;')
        for option, words in choices.items():
            values.append(f'        "{verb} {option}") COMPREPLY=($(compgen -W "{" ".join(words)}" -- "$cur")); return ;;')
    return "\n".join([
        "# eoembed bash completion: eval \"$(eoembed completion bash)\"",
        "_eoembed() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" verb="${COMP_WORDS[1]}" opts',
        "    if [[ $COMP_CWORD -eq 1 ]]; then",
        f'        COMPREPLY=($(compgen -W "{" ".join(verbs)} --help --version" -- "$cur")); return',
        "    fi",
        '    case "$verb $prev" in',
        *values,
        "    esac",
        '    case "$verb" in',
        *cases,
        "    esac",
        '    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); else COMPREPLY=($(compgen -f -- "$cur")); fi',
        "}",
        "complete -o filenames -F _eoembed eoembed",
    ])
