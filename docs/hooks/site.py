"""mkdocs hook: the README is the site's home page, and links between the repository's Markdown files
work on the site (a link to a file that is not a page of the site, such as a published result or a
script, becomes its repository path in text)."""
import posixpath
import re

from mkdocs.structure.files import File

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
ROOT_PAGES = {"README.md": "index.md"}


def on_files(files, config):
    files.append(File.generated(config, "index.md", abs_src_path=posixpath.join(
        posixpath.dirname(config["config_file_path"]), "README.md")))
    return files


def _repo_path(page) -> str:
    return "README.md" if page.file.src_uri == "index.md" else "docs/" + page.file.src_uri


def on_page_markdown(markdown, page, config, files):
    here = _repo_path(page)
    pages = {f.src_uri for f in files.documentation_pages()}

    def fix(match):
        bang, text, target = match.groups()
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo = posixpath.normpath(posixpath.join(posixpath.dirname(here), path))
        site = ROOT_PAGES.get(repo) or (repo[5:] if repo.startswith("docs/") and repo[5:] in pages else None)
        if site is None:
            return f"`{repo}`" if bang else f"{text} (`{repo}`)"
        link = posixpath.relpath(site, posixpath.dirname(page.file.src_uri) or ".")
        return f"{bang}[{text}]({link}{'#' + anchor if anchor else ''})"

    return LINK.sub(fix, markdown)
