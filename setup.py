"Installs m2df from settings.ini (nbdev 2 layout, written without pkg_resources)."
from configparser import ConfigParser
import re
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

for k in 'version description keywords author author_email'.split():
    assert k in cfg, f'settings.ini lacks {k!r}'

requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
min_python = cfg['min_python']
long_description = open('README.md', encoding='utf-8').read()
# relative image links in the README point into the repository
long_description = re.sub(r'\]\((?!https?://)', '](' + cfg['git_url'] + '/raw/' + cfg['branch'] + '/', long_description)

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    author=cfg['author'],
    author_email=cfg['author_email'],
    keywords=cfg['keywords'],
    url=cfg['git_url'],
    classifiers=['Programming Language :: Python :: 3', 'Topic :: Scientific/Engineering :: Artificial Intelligence'],
    packages=setuptools.find_packages(include=['m2df', 'm2df.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    python_requires='>=' + min_python,
    zip_safe=False,
    entry_points={'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
                  'console_scripts': [s.strip() for s in cfg.get('console_scripts', '').split()]},
)
