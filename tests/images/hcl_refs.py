#!/usr/bin/env python3
"""Parse the Terraform and Packer examples with python-hcl2 and report the
local files they read, resolved the way terraform/packer would resolve them.

Used by tests/images_*.rs (the tests run it with the venv's python that
.ci/run creates). Output is one JSON object on stdout:

  {"parsed": [files...],
   "references": [{"in": file, "call": "filebase64", "path": "/abs/path"}],
   "unresolved": [{"in": file, "expr": "..."}],
   "inline": [shell commands of Packer `shell` provisioners]}

Usage:
  hcl_refs.py parse FILE...
  hcl_refs.py terraform ROOT_DIR [-var NAME=VALUE]...
  hcl_refs.py packer TEMPLATE_DIR CWD [-var NAME=VALUE]...
  hcl_refs.py check-terraform TERRAFORM_ARGS...
  hcl_refs.py check-packer PACKER_ARGS...

The check-* modes stand in for the terraform and packer commands in the
docs (no cloud is reachable in tests): they take the same arguments, and
fail unless the example parses, every -var is declared, nothing in a file
path is left unresolved, and every file it reads exists.

Only what the examples use is evaluated: string templates over var.*,
local.*, path.module/root/cwd. Anything else in a file path is reported as
unresolved, which the tests treat as a failure.
"""

import json
import os
import re
import sys

import hcl2

FILE_CALL = re.compile(
    r"\b(file|filebase64|filesha256|filemd5|templatefile|fileexists)\(\s*"
    r"(\"(?:[^\"\\]|\\.)*\"|[A-Za-z_][\w.]*)"
)
INTERP = re.compile(r"\$\{([^{}]*)\}")


class Unresolved(Exception):
    pass


def load(path):
    with open(path) as f:
        return hcl2.load(f)


def unquote(s):
    return s[1:-1].replace('\\"', '"').replace("\\\\", "\\")


class Scope:
    def __init__(self, module_dir, root_dir, variables, locals_raw):
        self.module_dir = module_dir
        self.root_dir = root_dir
        self.variables = variables
        self.locals_raw = locals_raw

    def ref(self, name):
        name = name.strip()
        if name == "path.module":
            return self.module_dir
        if name in ("path.root", "path.cwd"):
            return self.root_dir
        if name.startswith("var."):
            key = name[4:]
            if key not in self.variables or self.variables[key] is None:
                raise Unresolved("variable %s has no value" % key)
            return self.value(self.variables[key])
        if name.startswith("local."):
            key = name[6:]
            if key not in self.locals_raw:
                raise Unresolved("no local %s" % key)
            return self.value(self.locals_raw[key])
        raise Unresolved("cannot evaluate %r" % name)

    def template(self, text):
        return INTERP.sub(lambda m: str(self.ref(m.group(1))), text)

    def value(self, v):
        """Evaluate a python-hcl2 value: a quoted template, a plain
        ${expr}, a number, or a raw -var string (marked by a tuple)."""
        if isinstance(v, tuple):
            return v[0]
        if isinstance(v, (int, float, bool)):
            return v
        if isinstance(v, str):
            if len(v) >= 2 and v.startswith('"') and v.endswith('"'):
                return self.template(unquote(v))
            m = re.fullmatch(r"\$\{([^{}]*)\}", v)
            if m:
                return self.ref(m.group(1))
        raise Unresolved("cannot evaluate %r" % (v,))


def blocks(doc, kind):
    for item in doc.get(kind, []):
        for name, body in item.items():
            yield name.strip('"'), body


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            if not k.startswith("__"):
                yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


GUARD = re.compile(r"^\$\{var\.(\w+) == 0 \?")


def guarded_off(value, scope):
    """`var.n == 0 ? "" : file(...)`: terraform reports nothing from the
    branch it does not take, so neither do we."""
    m = GUARD.match(value) if isinstance(value, str) else None
    if not m:
        return False
    try:
        return str(scope.ref("var." + m.group(1))) == "0"
    except Unresolved:
        return False


def file_refs(path, doc, scope, out):
    doc = dict(doc)
    doc["locals"] = [
        {k: v for k, v in item.items() if not guarded_off(v, scope)}
        for item in doc.get("locals", [])
    ]
    for s in strings(doc):
        for m in FILE_CALL.finditer(s):
            call, arg = m.group(1), m.group(2)
            try:
                if arg.startswith('"'):
                    p = scope.template(unquote(arg))
                else:
                    p = scope.ref(arg)
            except Unresolved as e:
                out["unresolved"].append({"in": path, "expr": m.group(0), "why": str(e)})
                continue
            if not os.path.isabs(p):
                p = os.path.join(scope.root_dir, p)
            out["references"].append(
                {"in": path, "call": call, "path": os.path.normpath(p)}
            )


def variables_of(docs, overrides):
    values = {}
    for doc in docs:
        for name, body in blocks(doc, "variable"):
            values[name] = body.get("default")
    for k, v in overrides.items():
        values[k] = (v,)
    return values


def locals_of(docs):
    out = {}
    for doc in docs:
        for item in doc.get("locals", []):
            for k, v in item.items():
                if not k.startswith("__"):
                    out[k] = v
    return out


def terraform(module_dir, root_dir, overrides, out, seen):
    files = sorted(
        os.path.join(module_dir, f) for f in os.listdir(module_dir) if f.endswith(".tf")
    )
    docs = []
    for f in files:
        docs.append(load(f))
        out["parsed"].append(os.path.normpath(f))
    scope = Scope(module_dir, root_dir, variables_of(docs, overrides), locals_of(docs))
    for f, doc in zip(files, docs):
        file_refs(os.path.normpath(f), doc, scope, out)
        for name, body in blocks(doc, "module"):
            source = scope.value(body["source"])
            if not (source.startswith("./") or source.startswith("../")):
                continue
            child = os.path.normpath(os.path.join(module_dir, source))
            inputs = {}
            for k, v in body.items():
                if k in ("source", "version", "providers", "count", "for_each", "depends_on") or k.startswith("__"):
                    continue
                try:
                    inputs[k] = scope.value(v)
                except Unresolved:
                    # Cloud ids without defaults: only a problem if a file
                    # path uses them, which is reported there.
                    pass
            if child in seen:
                continue
            seen.add(child)
            terraform(child, root_dir, {k: str(v) for k, v in inputs.items()}, out, seen)


def packer(template_dir, cwd, overrides, out):
    files = sorted(
        os.path.join(template_dir, f)
        for f in os.listdir(template_dir)
        if f.endswith(".pkr.hcl")
    )
    docs = []
    for f in files:
        docs.append(load(f))
        out["parsed"].append(os.path.normpath(f))
    scope = Scope(template_dir, cwd, variables_of(docs, overrides), locals_of(docs))
    for f, doc in zip(files, docs):
        file_refs(os.path.normpath(f), doc, scope, out)
        for build in doc.get("build", []):
            for prov in build.get("provisioner", []):
                for kind, body in prov.items():
                    kind = kind.strip('"')
                    if kind == "file":
                        try:
                            p = scope.value(body["source"])
                        except Unresolved as e:
                            out["unresolved"].append({"in": f, "expr": "file.source", "why": str(e)})
                            continue
                        if not os.path.isabs(p):
                            p = os.path.join(cwd, p)
                        out["references"].append(
                            {"in": f, "call": "provisioner.file", "path": os.path.normpath(p)}
                        )
                    elif kind == "shell":
                        for cmd in body.get("inline", []):
                            out["inline"].append(scope.value(cmd))


def declared(dirs, suffix):
    names = set()
    for d in dirs:
        for f in os.listdir(d):
            if f.endswith(suffix):
                for name, _ in blocks(load(os.path.join(d, f)), "variable"):
                    names.add(name)
    return names


def check(out, declared_vars, overrides, what):
    problems = []
    for k in overrides:
        if k not in declared_vars:
            problems.append("-var %s is not a variable of %s" % (k, what))
    for u in out["unresolved"]:
        problems.append("unresolved %s in %s: %s" % (u["expr"], u["in"], u["why"]))
    for r in out["references"]:
        if not os.path.isfile(r["path"]):
            problems.append("%s reads %s, which does not exist" % (r["in"], r["path"]))
    if not out["parsed"]:
        problems.append("no HCL files in %s" % what)
    if problems:
        raise SystemExit("\n".join(problems))


def split_vars(args):
    overrides, rest = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-var":
            k, _, v = args[i + 1].partition("=")
            overrides[k] = v
            i += 2
            continue
        if a.startswith("-var="):
            k, _, v = a[5:].partition("=")
            overrides[k] = v
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def check_terraform(args):
    chdir = "."
    if args and args[0].startswith("-chdir="):
        chdir, args = args[0][len("-chdir="):], args[1:]
    if not args or args[0] not in ("init", "validate", "plan", "apply", "output", "destroy"):
        raise SystemExit("unexpected terraform command: %r" % (args,))
    overrides, rest = split_vars(args[1:])
    root = os.path.abspath(chdir)
    if not os.path.isdir(root):
        raise SystemExit("-chdir=%s does not exist" % chdir)
    out = {"parsed": [], "references": [], "unresolved": [], "inline": []}
    terraform(root, root, overrides, out, set())
    check(out, declared([root], ".tf"), overrides, chdir)
    if args[0] == "output":
        outputs = set()
        for f in os.listdir(root):
            if f.endswith(".tf"):
                for name, _ in blocks(load(os.path.join(root, f)), "output"):
                    outputs.add(name)
        for name in rest:
            if not name.startswith("-") and name not in outputs:
                raise SystemExit("%s has no output %s" % (chdir, name))
    print("checked terraform %s in %s: %d files read, all built"
          % (args[0], chdir, len(out["references"])))


def check_packer(args):
    if not args or args[0] not in ("init", "validate", "build"):
        raise SystemExit("unexpected packer command: %r" % (args,))
    overrides, rest = split_vars(args[1:])
    target = [a for a in rest if not a.startswith("-")]
    if len(target) != 1 or not os.path.isdir(target[0]):
        raise SystemExit("packer %s needs one template directory, got %r" % (args[0], target))
    out = {"parsed": [], "references": [], "unresolved": [], "inline": []}
    packer(os.path.abspath(target[0]), os.getcwd(), overrides, out)
    if args[0] == "init":
        overrides = {}
        out["references"] = []
    check(out, declared([target[0]], ".pkr.hcl"), overrides, target[0])
    print("checked packer %s of %s: %d files read, all built"
          % (args[0], target[0], len(out["references"])))


def main(argv):
    out = {"parsed": [], "references": [], "unresolved": [], "inline": []}
    mode, rest = argv[1], argv[2:]
    if mode == "check-terraform":
        return check_terraform(rest)
    if mode == "check-packer":
        return check_packer(rest)
    overrides = {}
    args = []
    i = 0
    while i < len(rest):
        if rest[i] == "-var":
            k, _, v = rest[i + 1].partition("=")
            overrides[k] = v
            i += 2
        else:
            args.append(rest[i])
            i += 1
    if mode == "parse":
        for f in args:
            load(f)
            out["parsed"].append(f)
    elif mode == "terraform":
        root = os.path.abspath(args[0])
        terraform(root, root, overrides, out, set())
    elif mode == "packer":
        packer(os.path.abspath(args[0]), os.path.abspath(args[1]), overrides, out)
    else:
        raise SystemExit("unknown mode %s" % mode)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv)
