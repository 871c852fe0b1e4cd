import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'step_ros'

# Only step_ros and its subpackages: an unfiltered finder at the repo root would also pick up
# copies under build/ and install/.
packages = find_packages(include=[package_name, package_name + '.*'])


def files(pattern):
    return sorted(path for path in glob(pattern) if os.path.isfile(path))


setup(
    name=package_name,
    version='0.1.0',
    packages=packages,
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', files('launch/*.launch.py')),
        ('share/' + package_name + '/config', files('config/*.yaml') + files('config/*.xml')),
        ('share/' + package_name + '/models', files('models/*')),
    ],
    install_requires=['setuptools'],
    # colcon test runs pytest (not unittest) when pytest is a declared test dependency.
    extras_require={'test': ['pytest']},
    zip_safe=True,
    maintainer='step_ros maintainers',
    maintainer_email='step-ros@example.com',
    description='Human action recognition for ROS 2 with a frozen vision backbone.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'perception_node = step_ros.ros.perception_node:run',
        ],
    },
)
